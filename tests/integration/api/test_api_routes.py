"""Every route through the real lambda_handler, with API Gateway v2 events built from events/, against moto."""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from loraforge import secrets_store, signing
from loraforge.api.resolver import openapi_document_dict
from loraforge.models import ArtifactKind
from loraforge.models.status import DatasetStatus, JobStatus
from loraforge.observability import logger
from loraforge.presets import load_presets
from tests.integration.api.conftest import ENDPOINTS, PUBLIC_WEBHOOK, Api, job_body
from tests.support.apigw import OWNER_A, OWNER_B, api_event, invoke
from tests.support.events import load_event

# Routes that add no metric make powertools warn once per call; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


def test_the_sample_events_reach_their_routes(api: Api) -> None:
    # Given the committed sample events, unchanged but for ids that exist
    dataset = api.dataset()
    post = load_event("apigw_v2_post_job")
    body = json.loads(post["body"]) | {"dataset_id": dataset.id, "notify": {"webhook_url": PUBLIC_WEBHOOK}}
    post["body"] = json.dumps(body)
    # When the POST sample is sent, then the GET sample for the job it created
    created = invoke(post, api.context)
    get = load_event("apigw_v2_get_job")
    get["rawPath"] = get["requestContext"]["http"]["path"] = f"/v1/jobs/{created.json['id']}"
    fetched = invoke(get, api.context)
    # Then both answer for the sample's owner
    assert created.status == 201, created.json
    assert fetched.status == 200 and fetched.json["id"] == created.json["id"] and fetched.json["owner"] == "user-a"


def test_get_presets_lists_every_preset_with_defaults_bounds_vram_gpu_and_endpoint(api: Api) -> None:
    # When
    response = api.call("GET", "/v1/presets")
    # Then every preset of presets.yaml is listed with what a user chooses by
    assert response.status == 200
    items = {p["id"]: p for p in response.json["items"]}
    assert set(items) == set(load_presets())
    sdxl = items["sdxl"]
    assert sdxl["defaults"]["steps"] > 0 and sdxl["bounds"]["steps"]["max"] >= sdxl["defaults"]["steps"]
    assert sdxl["min_vram_gb"] > 0 and sdxl["gpu_class"] == "24gb" and sdxl["gpu_name"]
    assert sdxl["endpoint_configured"] is True and sdxl["gpu_price_per_second"] == pytest.approx(0.00031)
    assert all(p["endpoint_configured"] == (p["gpu_class"] in ENDPOINTS) for p in items.values())


def test_post_estimate_without_dataset_returns_time_cost_vram_and_warnings(api: Api) -> None:
    # When an estimate is asked for 5 images and 50 steps
    response = api.call("POST", "/v1/estimates", body={"preset": "sdxl", "image_count": 5, "hyperparameters": {"steps": 50}})
    # Then it prices the run with the configured GPU price and warns about what a trainer would
    assert response.status == 200, response.json
    estimate = response.json
    assert estimate["seconds"] > 0 and estimate["vram_gb"] > 0
    assert estimate["cost_usd"] == pytest.approx(estimate["seconds"] * 0.00031)
    codes = {w.split(":")[0] for w in estimate["warnings"]}
    assert {"TOO_FEW_IMAGES", "STEPS_FAR_FROM_DEFAULT"} <= codes
    assert response.json["hyperparameters"]["steps"] == 50 and response.json["image_count"] == 5


def test_post_estimate_with_a_dataset_uses_its_stats(api: Api) -> None:
    # Given a ready dataset whose smallest image side is 512 px
    dataset = api.dataset(images=30, min_side=512)
    # When an sdxl estimate (1024 px) is asked for it
    response = api.call("POST", "/v1/estimates", body={"preset": "sdxl", "dataset_id": dataset.id})
    # Then the upscaling warning comes from the dataset, and nothing was created
    assert response.status == 200, response.json
    assert any(w.startswith("UPSCALING") for w in response.json["warnings"])
    assert response.json["image_count"] == 30
    assert api.call("GET", "/v1/jobs").json["items"] == []


def test_post_dataset_returns_201_with_awaiting_upload_and_a_presigned_post_that_uploads(api: Api, aws_stack) -> None:
    # When a dataset is created
    response = api.call("POST", "/v1/datasets", body={"name": "my char", "kind": "images"})
    # Then it awaits its archive under the owner's prefix, and the presigned POST accepts exactly that key
    assert response.status == 201, response.json
    dataset = response.json
    assert dataset["status"] == "awaiting_upload" and dataset["id"].startswith("ds_")
    assert dataset["archive_key"] == f"datasets/{OWNER_A}/{dataset['id']}/dataset.zip"
    upload = dataset["upload"]
    assert upload["fields"]["key"] == dataset["archive_key"] and upload["expires_at"]
    sent = httpx.post(upload["url"], data=upload["fields"], files={"file": ("dataset.zip", b"PK\x05\x06" + b"\0" * 18)})
    assert sent.status_code in (200, 204), sent.text
    head = boto3.client("s3").head_object(Bucket=aws_stack.bucket, Key=dataset["archive_key"])
    assert head["ContentLength"] == 22


def test_get_dataset_shows_status_stats_rejected_items_and_a_manifest_link(api: Api) -> None:
    # Given a validated dataset
    dataset = api.dataset(images=12)
    # When
    response = api.call("GET", f"/v1/datasets/{dataset.id}")
    # Then
    assert response.status == 200, response.json
    body = response.json
    assert body["status"] == "ready" and body["stats"]["images"] == 12
    assert body["rejected_sample"] == [{"key": "notes.pdf", "reason": "NOT_AN_IMAGE", "message": "not an image file"}]
    assert body["manifest"]["url"] and "manifest.json" in body["manifest"]["url"] and body["manifest"]["expires_at"]
    assert "version" not in body


def test_get_datasets_pages_newest_first(api: Api) -> None:
    # Given three datasets
    made = [api.dataset() for _ in range(3)]
    # When listed two at a time
    first = api.call("GET", "/v1/datasets", query={"limit": "2"})
    second = api.call("GET", "/v1/datasets", query={"limit": "2", "cursor": first.json["next_cursor"]})
    # Then all three come back once, newest first
    ids = [d["id"] for d in first.json["items"] + second.json["items"]]
    assert ids == [d.id for d in reversed(made)]
    assert second.json["next_cursor"] is None


def test_post_job_queues_it_with_resolved_hyperparameters_and_estimate(api: Api) -> None:
    # Given a ready dataset
    dataset = api.dataset()
    # When a job is posted with a subset of hyperparameters and a webhook
    body = job_body(dataset.id, hyperparameters={"steps": 800, "rank": 32}, notify={"webhook_url": PUBLIC_WEBHOOK},
                    samples={"prompts": ["mychar on a beach"], "every": 200}, checkpoints={"every": 200, "keep": 3},
                    metadata={"project": "spring"})
    response = api.call("POST", "/v1/jobs", body=body)
    # Then it is queued, the rest of the hyperparameters come from the preset, and the estimate is attached
    assert response.status == 201, response.json
    job = response.json
    defaults = load_presets()["sdxl"].defaults
    assert job["status"] == "queued" and job["owner"] == OWNER_A and job["dataset_id"] == dataset.id
    assert job["hyperparameters"]["steps"] == 800 and job["hyperparameters"]["rank"] == 32
    assert job["hyperparameters"]["learning_rate"] == defaults.learning_rate
    assert job["estimate"]["cost_usd"] > 0 and job["cost"]["estimated_usd"] == job["estimate"]["cost_usd"]
    assert job["progress"]["total_steps"] == 800 and job["attempts"] == 1 and job["source"] == "api"
    assert job["metadata"] == {"project": "spring"}
    # and the control-plane fields stay private
    assert not {"version", "worker_seq", "dispatch_attempts"} & set(job)
    # and a `created` event is the first thing in its history
    events = api.call("GET", f"/v1/jobs/{job['id']}/events")
    assert [e["type"] for e in events.json["items"]] == ["created"]


def test_get_job_returns_the_design_fields(api: Api) -> None:
    # Given a job
    job = api.job(status=JobStatus.RUNNING)
    # When
    response = api.call("GET", f"/v1/jobs/{job.id}")
    # Then the DESIGN §6 fields are there
    assert response.status == 200
    for key in ("id", "status", "preset", "dataset_id", "hyperparameters", "progress", "cost", "attempts", "created_at",
                "started_at", "finished_at", "error", "result"):
        assert key in response.json, key
    assert set(response.json["progress"]) >= {"step", "total_steps", "percent", "loss", "eta_seconds"}
    assert set(response.json["cost"]) >= {"estimated_usd", "actual_usd"}


def test_get_jobs_filters_by_status_and_pages(api: Api) -> None:
    # Given jobs in two statuses
    queued = [api.job(status=JobStatus.QUEUED) for _ in range(3)]
    api.job(status=JobStatus.FAILED)
    # When the queued ones are listed two at a time
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        query = {"status": "queued", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = api.call("GET", "/v1/jobs", query=query)
        assert page.status == 200, page.json
        seen += [j["id"] for j in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    # Then exactly the queued jobs came back, newest first
    assert seen == [j.id for j in reversed(queued)]
    assert all(j["status"] == "queued" for j in api.call("GET", "/v1/jobs", query={"status": "queued"}).json["items"])


def test_cancel_a_queued_job_cancels_it_at_once(api: Api) -> None:
    # Given a queued job
    job = api.job(status=JobStatus.QUEUED)
    # When it is cancelled
    response = api.call("POST", f"/v1/jobs/{job.id}/cancel", body={"keep_latest": False})
    # Then
    assert response.status == 200, response.json
    assert response.json["status"] == "cancelled"
    assert api.call("GET", f"/v1/jobs/{job.id}").json["status"] == "cancelled"


def test_cancel_without_a_body_is_accepted(api: Api) -> None:
    # Given a queued job
    job = api.job(status=JobStatus.QUEUED)
    # When cancel is posted with no body at all
    response = api.call("POST", f"/v1/jobs/{job.id}/cancel")
    # Then keep_latest defaults to false
    assert response.status == 200, response.json
    assert response.json["status"] == "cancelled" and response.json["keep_latest"] is False


def test_retry_of_a_failed_job_creates_a_new_queued_attempt(api: Api) -> None:
    # Given a failed job
    failed = api.job(status=JobStatus.FAILED)
    # When it is retried
    response = api.call("POST", f"/v1/jobs/{failed.id}/retry")
    # Then a new job carries the next attempt
    assert response.status == 201, response.json
    retry = response.json
    assert retry["id"] != failed.id and retry["status"] == "queued"
    assert retry["retry_of"] == failed.id and retry["attempts"] == failed.attempts + 1


def test_get_events_pages_with_after(api: Api) -> None:
    # Given a job with 5 events
    job = api.job()
    for step in range(5):
        api.table.append_event(job.id, "progress", {"step": step})
    # When they are read 2 at a time following next_cursor
    first = api.call("GET", f"/v1/jobs/{job.id}/events", query={"limit": "2"})
    rest = api.call("GET", f"/v1/jobs/{job.id}/events", query={"after": first.json["next_cursor"]})
    # Then every event comes once, in order
    seqs = [e["seq"] for e in first.json["items"] + rest.json["items"]]
    assert seqs == sorted(seqs) and len(seqs) == 5
    assert rest.json["next_cursor"] is None


def test_events_pages_cut_short_by_dynamodbs_1mb_still_lead_to_every_event(api: Api) -> None:
    # Given a job with 6 large log events (about 300 KB each: DynamoDB returns at most 1 MB per query)
    job = api.job()
    for n in range(6):
        api.table.append_event(job.id, "log", {"lines": [f"{n}" * 300_000]})

    # When they are read 100 at a time, following next_cursor until it is null
    seqs, cursor, pages = [], None, 0
    while True:
        page = api.call("GET", f"/v1/jobs/{job.id}/events", query={"limit": "100", **({"after": str(cursor)} if cursor else {})})
        seqs += [e["seq"] for e in page.json["items"]]
        cursor, pages = page.json["next_cursor"], pages + 1
        if cursor is None:
            break

    # Then a page held fewer than the limit but said more follow, and every event came once, in order
    assert pages > 1
    assert seqs == list(range(1, 7))


def test_get_metrics_returns_loss_and_lr_by_step(api: Api) -> None:
    # Given a job with metric points
    job = api.job(status=JobStatus.RUNNING)
    api.metrics(job, steps=4)
    # When
    response = api.call("GET", f"/v1/jobs/{job.id}/metrics")
    # Then
    assert response.status == 200
    assert response.json["items"] == [{"step": s, "loss": pytest.approx(1.0 / s), "lr": pytest.approx(1e-4)} for s in range(1, 5)]


def test_get_metrics_returns_the_whole_loss_curve_of_a_job_at_the_presets_step_limit(api: Api) -> None:
    # Given a 6,000-step job (flux-dev's upper bound) whose worker reported a point for every step
    job = api.job(status=JobStatus.SUCCEEDED)
    job = job.model_copy(update={"hyperparameters": job.hyperparameters.model_copy(update={"steps": 6000})})
    api.table.update_job(job.id, set_fields={"hyperparameters": job.hyperparameters.model_dump(mode="json")})
    api.metrics(job, steps=6000)
    # When the loss curve is read
    response = api.call("GET", f"/v1/jobs/{job.id}/metrics")
    # Then every step is there, the last ones included (the chart does not stop at 5,000)
    assert response.status == 200
    steps = [p["step"] for p in response.json["items"]]
    assert steps == list(range(1, 6001))


def test_get_artifacts_returns_presigned_urls_that_download_the_file(api: Api, aws_stack) -> None:
    # Given a finished job whose final LoRA is in S3
    job = api.job(status=JobStatus.SUCCEEDED)
    artifacts = api.artifacts(job, kinds=(ArtifactKind.CHECKPOINT, ArtifactKind.FINAL))
    final = artifacts[-1]
    boto3.client("s3").put_object(Bucket=aws_stack.bucket, Key=final.key, Body=b"safetensors-bytes")
    # When the artifacts are listed, all and by kind
    listed = api.call("GET", f"/v1/jobs/{job.id}/artifacts")
    finals = api.call("GET", f"/v1/jobs/{job.id}/artifacts", query={"kind": "final"})
    # Then each has the documented fields and a working, expiring URL
    assert listed.status == 200
    assert {a["kind"] for a in listed.json["items"]} == {"checkpoint", "final"}
    item = finals.json["items"][0]
    assert set(item) >= {"kind", "step", "key", "size", "sha256", "name", "url", "expires_at"}
    assert item["key"] == final.key and item["size"] == 1234
    assert "X-Amz-Expires" in item["url"] or "Expires" in parse_qs(urlsplit(item["url"]).query)
    assert httpx.get(item["url"]).content == b"safetensors-bytes"


def test_get_webhook_secret_is_the_owners_derived_secret(api: Api) -> None:
    # When two owners ask for their secret
    a = api.call("GET", "/v1/webhook-secret", owner=OWNER_A)
    b = api.call("GET", "/v1/webhook-secret", owner=OWNER_B)
    # Then each gets the HMAC-derived one, different per owner
    assert a.json["secret"] == signing.owner_webhook_secret(secrets_store.signing_key(), OWNER_A)
    assert a.json["secret"].startswith("whsec_") and a.json["secret"] != b.json["secret"]


def test_openapi_json_is_served_without_auth_and_matches_the_generated_document(api: Api) -> None:
    # When fetched with no authorizer context
    response = api.call("GET", "/openapi.json", owner=None)
    # Then it is the document generated from the resolver
    assert response.status == 200
    assert response.json == openapi_document_dict()
    assert "/v1/jobs/{job_id}/artifacts" in response.json["paths"]


def test_a_dataset_status_other_than_ready_is_shown_with_its_errors(api: Api) -> None:
    # Given an invalid dataset
    dataset = api.dataset(status=DatasetStatus.INVALID, images=0)
    # When
    response = api.call("GET", f"/v1/datasets/{dataset.id}")
    # Then its errors say why
    assert response.json["status"] == "invalid" and response.json["errors"][0]["code"] == "TOO_FEW_IMAGES"


def test_a_base64_encoded_body_is_decoded(api: Api) -> None:
    # When API Gateway hands the body over base64-encoded
    event = api_event("POST", "/v1/datasets", body={"name": "b64"}, base64_body=True)
    response = invoke(event, api.context)
    # Then it is read like any other
    assert response.status == 201, response.json
    assert response.json["name"] == "b64"



def _json_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def test_metrics_and_log_keys_through_the_shared_observability(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a ready dataset, and the shared logger writing where the test can read it
    dataset = api.dataset()
    log = io.StringIO()
    previous = logger.registered_handler.setStream(log)
    capsys.readouterr()
    try:
        # When an estimate, a job and its cancellation are requested
        api.call("POST", "/v1/estimates", body={"preset": "sdxl"})
        job = api.call("POST", "/v1/jobs", body=job_body(dataset.id)).json
        api.call("POST", f"/v1/jobs/{job['id']}/cancel")
    finally:
        logger.registered_handler.setStream(previous)
    # Then each use case published its metric (CloudWatch EMF on stdout)
    emf = _json_lines(capsys.readouterr().out)
    published = {m["Name"] for r in emf for d in r.get("_aws", {}).get("CloudWatchMetrics", []) for m in d["Metrics"]}
    assert {"EstimateRequested", "JobsCreated", "JobsCancelled"} <= published
    # and the job's log lines carry the owner and the job id, plus the API Gateway request id as correlation id
    records = _json_lines(log.getvalue())
    created = next(r for r in records if r.get("message") == "job created")
    assert created["owner"] == OWNER_A and created["job_id"] == job["id"] and created["correlation_id"]
    about_the_job = [r for r in records if r.get("job_id") == job["id"]]
    assert len(about_the_job) >= 2 and all(r["owner"] == OWNER_A for r in about_the_job)
