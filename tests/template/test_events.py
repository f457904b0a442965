"""Sample events in events/: each parses with the powertools model its function uses, and carries the project's shapes.

Handlers parse their input with these models, so a sample that does not parse would test a code path production
never takes. The payloads inside (job items, request bodies, RunPod bodies) are checked against loraforge's own
models for the same reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventV2Model,
    DynamoDBStreamModel,
    EventBridgeModel,
    S3EventNotificationEventBridgeModel,
    SqsModel,
)
from pydantic import BaseModel, ConfigDict

from loraforge.contract import WorkerEvent, WorkerInput, WorkerResult
from loraforge.dal.keys import decode_event_key, parse_dataset_archive_key, parse_drop_key
from loraforge.models.common import ID_PATTERN
from loraforge.models.job import Job
from loraforge.models.requests import CreateJobRequest
from tests.support.events import event_names, load_event

JOB_ID = "job_01jd4m7q2x8k3v5n9c6h"
DATASET_ID = "ds_01jd4m5a7b2c9e4f6g8h"


class RunPodWebhookBody(BaseModel):
    """RunPod's cloud webhook body (the /status response plus `webhook`): not an AWS event, so no powertools model."""

    model_config = ConfigDict(extra="forbid")

    delayTime: int
    executionTime: int
    id: str
    input: dict[str, Any]
    output: dict[str, Any]
    status: str
    webhook: str
    error: str | None = None  # FAILED runs: the worker's "<CODE>: <message>" (RunPod keeps only a string)


# File-name prefix -> the model the receiving function parses with. Every file in events/ must match one.
MODEL_BY_PREFIX: dict[str, type[BaseModel]] = {
    "s3_": S3EventNotificationEventBridgeModel,
    "apigw_v2_": APIGatewayProxyEventV2Model,
    "dynamodb_stream_": DynamoDBStreamModel,
    "schedule_": EventBridgeModel,
    "sqs_": SqsModel,
    "runpod_webhook_": RunPodWebhookBody,
}
REQUIRED_EVENTS = {
    "s3_object_created_eventbridge",
    "s3_dataset_uploaded_eventbridge",
    "apigw_v2_get_job",
    "apigw_v2_post_job",
    "apigw_v2_runpod_hook",
    "apigw_v2_worker_hook",
    "dynamodb_stream_job_queued",
    "dynamodb_stream_job_succeeded",
    "schedule_reconcile",
    "sqs_webhook_delivery",
    "runpod_webhook_completed",
}


def _model_for(name: str) -> type[BaseModel] | None:
    return next((model for prefix, model in MODEL_BY_PREFIX.items() if name.startswith(prefix)), None)


def test_every_function_has_its_sample_events_and_each_file_has_a_model() -> None:
    # Given the files in events/
    names = set(event_names())

    # When each is matched to the model its function parses with
    unmodelled = {name for name in names if _model_for(name) is None}

    # Then every required sample exists, and none escapes the parse check below
    assert REQUIRED_EVENTS <= names
    assert unmodelled == set()


@pytest.mark.parametrize("name", event_names())
def test_sample_event_parses_with_its_model(name: str) -> None:
    # Given a sample event and the model of the function that receives it
    event, model = load_event(name), _model_for(name)
    assert model is not None, f"{name}: no model for this file name (see MODEL_BY_PREFIX)"

    # When the model reads it
    parsed = parse(event=event, model=model)

    # Then it validates
    assert isinstance(parsed, model)


def _stream_job(name: str, image: str) -> Job:
    (record,) = parse(event=load_event(name), model=DynamoDBStreamModel).Records
    item = getattr(record.dynamodb, image)
    return Job.model_validate({k: v for k, v in item.items() if k not in {"pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"}})


def test_stream_samples_are_job_items_as_the_dal_writes_them() -> None:
    # Given the stream samples
    queued = load_event("dynamodb_stream_job_queued")["Records"][0]
    succeeded = load_event("dynamodb_stream_job_succeeded")["Records"][0]

    # When their images are read as jobs
    inserted = _stream_job("dynamodb_stream_job_queued", "NewImage")
    before, after = _stream_job("dynamodb_stream_job_succeeded", "OldImage"), _stream_job("dynamodb_stream_job_succeeded", "NewImage")

    # Then a queued job is inserted on its sparse queue index, and a running job becomes succeeded and leaves it
    assert (queued["eventName"], inserted.status, inserted.id) == ("INSERT", "queued", JOB_ID)
    assert queued["dynamodb"]["NewImage"]["gsi2pk"] == {"S": "STATUS#queued"}
    assert (succeeded["eventName"], before.status, after.status) == ("MODIFY", "running", "succeeded")
    assert "gsi2pk" in succeeded["dynamodb"]["OldImage"] and "gsi2pk" not in succeeded["dynamodb"]["NewImage"]
    assert after.result is not None and after.result.lora is not None and after.result.lora.key.startswith(f"jobs/{after.owner}/{JOB_ID}/")


def test_s3_samples_use_form_encoded_keys_that_decode_to_drop_and_dataset_keys() -> None:
    # Given the S3 samples (keys arrive form-encoded, as S3 notifications send them)
    keys = {name: load_event(name)["detail"]["object"]["key"] for name in event_names() if name.startswith("s3_")}

    # When decoded in the one place the code does it
    decoded = {name: decode_event_key(key) for name, key in keys.items()}

    # Then the zip and the folder trigger are drop-to-train uploads, and the dataset upload names its dataset
    assert keys["s3_folder_trigger_eventbridge"] == "incoming/user-a/summer+trip/loraforge.yaml"
    assert parse_drop_key(decoded["s3_object_created_eventbridge"]).name == "mychar"
    assert parse_drop_key(decoded["s3_folder_trigger_eventbridge"]).name == "summer trip"
    assert parse_dataset_archive_key(decoded["s3_dataset_uploaded_eventbridge"]).dataset_id == DATASET_ID


def test_api_samples_carry_the_owner_and_a_valid_body() -> None:
    # Given the authenticated API samples and the unauthenticated hooks
    get_job, post_job = load_event("apigw_v2_get_job"), load_event("apigw_v2_post_job")
    runpod_hook, worker_hook = load_event("apigw_v2_runpod_hook"), load_event("apigw_v2_worker_hook")

    # When their identities and bodies are read
    owners = {e["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] for e in (get_job, post_job)}
    request = CreateJobRequest.model_validate_json(post_job["body"])
    worker_event = WorkerEvent.model_validate_json(worker_hook["body"])

    # Then the JWT routes name the owner, the hooks carry no authorizer, and the bodies are what clients send
    assert owners == {"user-a"}
    assert "authorizer" not in runpod_hook["requestContext"] and "authorizer" not in worker_hook["requestContext"]
    assert request.dataset_id == DATASET_ID and "idempotency-key" in post_job["headers"]
    assert worker_event.job_id == worker_hook["pathParameters"]["job"] == JOB_ID
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(worker_hook["headers"])
    assert runpod_hook["pathParameters"]["job"] == JOB_ID and runpod_hook["body"] == json.dumps(
        load_event("runpod_webhook_completed"), separators=(",", ":")
    )


def test_runpod_webhook_body_echoes_the_worker_contract() -> None:
    # Given RunPod's completion webhook
    body = RunPodWebhookBody.model_validate(load_event("runpod_webhook_completed"))

    # When its input and output are read with the worker contract
    worker_input = WorkerInput.model_validate(body.input)
    result = WorkerResult.model_validate(body.output)

    # Then it is this job's completed attempt, and the hook URL names the job
    assert (body.status, worker_input.job_id, result.job_id, result.status) == ("COMPLETED", JOB_ID, JOB_ID, "completed")
    assert body.webhook.split("/")[-2] == JOB_ID
    assert re.fullmatch(ID_PATTERN, JOB_ID) and re.fullmatch(ID_PATTERN, DATASET_ID)
