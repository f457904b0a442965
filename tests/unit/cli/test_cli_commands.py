"""The CLI against a stand-in HTTP API on loopback: output, --json, exit codes, errors without tracebacks."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from loraforge.cli.main import main
from loraforge.cli.progress import render_bar

Response = tuple[int, Any]


class FakeApi:
    """Routes `(METHOD, path)` to a canned response, or to a list of responses served in turn (the last one repeats)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Response | list[Response] | Callable[[dict[str, Any]], Response]] = {}
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = {"method": self.command, "path": parts.path, "query": parts.query, "headers": dict(self.headers), "body": body}
                api.requests.append(request)
                route = api.routes.get((self.command, parts.path))
                if route is None:
                    status, payload = 404, {"error": {"code": "NOT_FOUND", "message": f"no route {parts.path}", "details": None}}
                elif callable(route):
                    status, payload = route(request)
                elif isinstance(route, list):
                    status, payload = route.pop(0) if len(route) > 1 else route[0]
                else:
                    status, payload = route
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.close()


def run(api: FakeApi, *argv: str, token: str = "tok") -> int:
    return main([*argv, "--api-url", api.url, "--token", token])


def job(status: str, step: int = 0, total: int = 30, **extra: Any) -> dict[str, Any]:
    return {"id": "job_1", "status": status, "preset": "tiny-sd", "dataset_id": "ds_1", "attempts": 1,
            "progress": {"step": step, "total_steps": total, "percent": 100 * step / total, "loss": 0.25 if step else None, "eta_seconds": 12},
            "cost": {"estimated_usd": 0.0}, **extra}


def test_jobs_show_human_and_json(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a running job
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("running", 10))

    # When it is shown, then shown as JSON
    assert run(api, "jobs", "show", "job_1") == 0
    human = capsys.readouterr().out
    assert run(api, "jobs", "show", "job_1", "--json") == 0
    machine = json.loads(capsys.readouterr().out)

    # Then a person sees the status and steps, a program gets the resource, and the token was sent as a bearer
    assert "job job_1: running" in human and "10/30" in human
    assert machine["id"] == "job_1" and machine["progress"]["step"] == 10
    assert api.requests[0]["headers"]["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"cost": {"estimated_usd": 0.63, "actual_usd": 0.25, "billed_seconds": 1230.0}, "run_seconds": 1200.0},
         ["cost       $0.2500 billed by RunPod for 20:30 of GPU time", "run time   20:00 measured"]),
        ({"cost": {"estimated_usd": 0.63, "actual_usd": None}, "run_seconds": 2100.0, "attempts": 2},
         ["estimate   $0.6300 (not billed by RunPod yet)", "run time   35:00 measured over 2 attempts"]),
        ({"cost": {"estimated_usd": 0.63, "actual_usd": None}, "run_seconds": None}, ["estimate   $0.6300 (not billed by RunPod yet)"]),
    ],
)
def test_jobs_show_says_how_sure_the_cost_is(api: FakeApi, capsys: pytest.CaptureFixture[str], fields: dict[str, Any],
                                             expected: list[str]) -> None:
    # Given a job billed by RunPod, one only measured so far (over two attempts), and one that never ran
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30) | fields)

    # When it is shown
    assert run(api, "jobs", "show", "job_1") == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]

    # Then the cost line names its source: RunPod's bill, or an estimate not billed yet, plus the measured run time
    assert [line for line in lines if line.startswith(("cost", "estimate", "run time"))] == expected


def test_api_errors_print_code_and_message_without_traceback(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the API refuses a retry of a running job
    api.routes[("POST", "/v1/jobs/job_1/retry")] = (409, {"error": {"code": "INVALID_TRANSITION", "message": "job_1 is running", "details": None}})

    # When the CLI asks, with and without --json
    code = run(api, "jobs", "retry", "job_1")
    err = capsys.readouterr().err
    json_code = run(api, "jobs", "retry", "job_1", "--json")
    out = json.loads(capsys.readouterr().out)

    # Then it exits 1 with the API's code and message, and --json carries the error document
    assert code == json_code == 1
    assert err.strip() == "error: INVALID_TRANSITION: job_1 is running"
    assert "Traceback" not in err
    assert out["error"]["code"] == "INVALID_TRANSITION" and out["error"]["status"] == 409


def test_gateway_401_is_reported(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/v1/presets")] = (401, {"message": "Unauthorized"})

    assert run(api, "presets") == 1
    assert capsys.readouterr().err.strip() == "error: UNAUTHORIZED: Unauthorized"


def test_unreachable_api_and_missing_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORAFORGE_API_URL", raising=False)
    monkeypatch.delenv("LORAFORGE_TOKEN", raising=False)

    assert main(["presets", "--api-url", "http://127.0.0.1:9", "--token", "t"]) == 1
    assert "cannot reach the API at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["presets"]) == 1
    assert "no API configured" in capsys.readouterr().err


def test_local_state_file_provides_url_and_the_chosen_users_token(api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a local stack state file with two users
    state = {"api_url": api.url, "tokens": {"alice": "ta", "bob": "tb"}, "aws_endpoint_url": "http://127.0.0.1:1", "bucket": "b",
             "table": "t", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t", "runpod_url": "http://127.0.0.1:2/v2"}
    (tmp_path / ".loraforge").mkdir()
    (tmp_path / ".loraforge" / "local.json").write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORAFORGE_API_URL", raising=False)
    monkeypatch.delenv("LORAFORGE_TOKEN", raising=False)
    api.routes[("GET", "/v1/presets")] = (200, {"items": []})

    # When commands run with no flags, then with --user bob
    assert main(["presets"]) == 0
    assert main(["presets", "--user", "bob"]) == 0

    # Then the first user's token is the default and --user picks another
    assert [r["headers"]["Authorization"] for r in api.requests] == ["Bearer ta", "Bearer tb"]


def test_watch_follows_the_job_to_success_and_lists_artifacts(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job that moves from queued to succeeded over four polls
    api.routes[("GET", "/v1/jobs/job_1")] = [(200, job("queued")), (200, job("running", 10)), (200, job("running", 20)), (200, job("succeeded", 30))]
    api.routes[("GET", "/v1/jobs/job_1/events")] = [
        (200, {"items": [{"seq": 1, "type": "created", "at": "2026-11-21T10:00:00.000Z", "data": {}}], "next_cursor": None}),
        (200, {"items": [{"seq": 2, "type": "checkpoint", "at": "2026-11-21T10:00:05.000Z", "data": {"step": 10}}], "next_cursor": None}),
        (200, {"items": [], "next_cursor": None}),
    ]
    final = {"kind": "final", "step": 30, "key": "jobs/alice/job_1/final/lora.safetensors", "size": 2048, "sha256": "0" * 64, "url": "u"}
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": [final]})

    # When it is watched (not a terminal: one line per status/tenth)
    code = run(api, "jobs", "watch", "job_1", "--interval", "0")

    # Then the bar advanced through the steps, events were shown, and the artifact list closes the output
    out = capsys.readouterr().out
    assert code == 0
    assert "10/30" in out and "20/30" in out and "30/30" in out
    assert "checkpoint  step=10" in out
    assert "jobs/alice/job_1/final/lora.safetensors" in out
    after = [r["query"] for r in api.requests if r["path"].endswith("/events")]
    assert after[1] == "after=1" and after[2] == "after=2"


def test_watch_of_a_failed_job_exits_3_with_its_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    failed = job("failed", 12, error={"code": "GPU_OOM", "message": "out of memory at batch 4", "kind": "user"})
    api.routes[("GET", "/v1/jobs/job_1")] = (200, failed)
    api.routes[("GET", "/v1/jobs/job_1/events")] = (200, {"items": []})
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": []})

    assert run(api, "jobs", "watch", "job_1", "--interval", "0") == 3
    assert "GPU_OOM: out of memory at batch 4 (user)" in capsys.readouterr().out


def test_progress_bar_rendering() -> None:
    bar = render_bar(job("running", 15), unicode=False, width=10)
    assert bar.split() == ["running", "[#####-----]", "15/30", "50%", "loss", "0.2500", "ETA", "00:12"]
    assert "ETA" not in render_bar(job("succeeded", 30))


def test_download_verifies_the_checksum(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a final LoRA and a checkpoint whose stored sha256 does not match its bytes
    content = b"safetensors bytes"
    api.routes[("GET", "/files/lora.safetensors")] = (200, content)
    api.routes[("GET", "/files/ckpt.safetensors")] = (200, b"tampered")
    lora = {"kind": "final", "step": 30, "key": "jobs/a/job_1/final/lora.safetensors", "name": "lora.safetensors", "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest()}
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": lora, "files": [lora | {"part": None}], "steps": 30}))
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": [
        lora | {"url": f"{api.url}/files/lora.safetensors", "expires_at": "x"},
        {"kind": "checkpoint", "step": 10, "key": "jobs/a/job_1/checkpoints/ckpt.safetensors", "name": "ckpt.safetensors", "size": 8,
         "sha256": hashlib.sha256(b"original").hexdigest(), "url": f"{api.url}/files/ckpt.safetensors", "expires_at": "x"},
    ]})

    # When the final LoRA and then the checkpoint are downloaded
    final_code = run(api, "jobs", "download", "job_1", "-o", str(tmp_path))
    checkpoint_code = run(api, "jobs", "download", "job_1", "--checkpoint", "10", "-o", str(tmp_path))

    # Then the good file is written, and the corrupt one is refused and leaves nothing behind
    assert final_code == 0 and (tmp_path / "lora.safetensors").read_bytes() == content
    assert checkpoint_code == 1 and "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "ckpt.safetensors").exists() and not list(tmp_path.glob("*.part"))
    assert run(api, "jobs", "download", "job_1", "--checkpoint", "99") == 1
    assert "no checkpoint at step 99; stored steps: 10" in capsys.readouterr().err


def test_download_writes_inside_the_output_folder_whatever_name_the_api_gives(api: FakeApi, tmp_path: Path) -> None:
    # Given an artifact whose recorded name (taken from a worker event, not checked against its key) climbs out of the folder
    content = b"safetensors bytes"
    api.routes[("GET", "/files/lora.safetensors")] = (200, content)
    lora = {"kind": "final", "step": 30, "key": "jobs/a/job_1/final/lora.safetensors", "name": "../../escaped.safetensors",
            "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": lora, "files": [lora | {"part": None}], "steps": 30}))
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": [lora | {"url": f"{api.url}/files/lora.safetensors", "expires_at": "x"}]})
    out = tmp_path / "a" / "b"
    # When it is downloaded into a/b
    code = run(api, "jobs", "download", "job_1", "-o", str(out))
    # Then the file lands inside a/b under its plain file name, and nothing is written above it
    assert code == 0
    assert (out / "escaped.safetensors").read_bytes() == content
    assert not (tmp_path / "escaped.safetensors").exists()


def test_download_into_a_path_that_is_a_file_is_one_line_and_exit_1(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job with a final LoRA, and an -o path that is an existing file
    content = b"safetensors bytes"
    api.routes[("GET", "/files/lora.safetensors")] = (200, content)
    lora = {"kind": "final", "step": 30, "key": "jobs/a/job_1/final/lora.safetensors", "name": "lora.safetensors", "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest()}
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": lora, "files": [lora | {"part": None}], "steps": 30}))
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": [lora | {"url": f"{api.url}/files/lora.safetensors", "expires_at": "x"}]})
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    # When the LoRA is downloaded there
    code = run(api, "jobs", "download", "job_1", "-o", str(taken))
    # Then the CLI says why in one line and exits 1 (no traceback), and the file is untouched
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "notes.txt" in err and "Traceback" not in err
    assert taken.read_text() == "mine"


def split_lora(api: FakeApi, step: int, kind: str = "final") -> list[dict[str, Any]]:
    """A Wan 2.2 14B save as the artifacts route lists it: one file per expert, each served at a presigned URL."""
    items = []
    for part in ("high_noise", "low_noise"):
        name = f"job_1_{part}.safetensors" if kind == "final" else f"job_1_{step:09d}_{part}.safetensors"
        body = f"{kind}-{step}-{part}".encode()
        api.routes[("GET", f"/files/{name}")] = (200, body)
        items.append({"kind": kind, "step": step, "key": f"jobs/a/job_1/{kind}/{name}", "name": name, "size": len(body),
                      "sha256": hashlib.sha256(body).hexdigest(), "url": f"{api.url}/files/{name}", "expires_at": "x"})
    return items


def result_files(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's `result.files` for listed artifacts: no URL, the expert named."""
    return [{k: v for k, v in f.items() if k not in ("url", "expires_at")} | {"part": "high_noise" if "high_noise" in f["name"] else "low_noise"}
            for f in items]


def test_download_of_a_split_lora_writes_every_file_of_it(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a succeeded Wan 2.2 14B job whose result is two files (one per expert), and split checkpoints at steps 10 and 20
    finals = split_lora(api, 30)
    checkpoints = split_lora(api, 10, "checkpoint") + split_lora(api, 20, "checkpoint")
    files = result_files(finals)
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": files[0], "files": files, "steps": 30}))
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": checkpoints + finals})

    # When the LoRA is downloaded (as JSON), then the latest checkpoint
    assert run(api, "jobs", "download", "job_1", "-o", str(tmp_path / "lora"), "--json") == 0
    listed = json.loads(capsys.readouterr().out)["files"]
    assert run(api, "jobs", "download", "job_1", "--checkpoint", "latest", "-o", str(tmp_path / "ckpt")) == 0

    # Then both expert files of the LoRA are written and checked, each named with its expert, and both files of step 20
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["job_1_high_noise.safetensors", "job_1_low_noise.safetensors"]
    assert (tmp_path / "lora" / "job_1_low_noise.safetensors").read_bytes() == b"final-30-low_noise"
    assert [(f["kind"], f["part"]) for f in listed] == [("final", "high_noise"), ("final", "low_noise")]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"job_1_000000020_{part}.safetensors" for part in ("high_noise", "low_noise")]


def test_download_refuses_half_a_lora_when_a_file_of_it_is_gone(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a split LoRA result whose low-noise file is no longer listed among the job's artifacts
    finals = split_lora(api, 30)
    files = result_files(finals)
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": files[0], "files": files, "steps": 30}))
    api.routes[("GET", "/v1/jobs/job_1/artifacts")] = (200, {"items": finals[:1]})

    # When the LoRA is downloaded
    code = run(api, "jobs", "download", "job_1", "-o", str(tmp_path))

    # Then nothing is written and the missing file is named
    assert code == 1 and "job_1_low_noise.safetensors of the job's LoRA is no longer stored" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_show_lists_every_file_of_a_split_lora(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a succeeded job whose LoRA is two files
    files = [{"kind": "final", "step": 30, "key": f"jobs/a/job_1/final/job_1_{p}.safetensors", "size": 2048, "sha256": "0" * 64, "part": p}
             for p in ("high_noise", "low_noise")]
    api.routes[("GET", "/v1/jobs/job_1")] = (200, job("succeeded", 30, result={"lora": files[0], "files": files, "steps": 30}))

    # When it is shown
    assert run(api, "jobs", "show", "job_1") == 0

    # Then each file has its line, naming its expert
    out = capsys.readouterr().out
    assert "jobs/a/job_1/final/job_1_high_noise.safetensors (2.0 KB, high_noise)" in out
    assert "jobs/a/job_1/final/job_1_low_noise.safetensors (2.0 KB, low_noise)" in out


def test_dataset_upload_zips_the_folder_posts_it_and_prints_rejections(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a folder with an image, its caption and a file the API will reject
    folder = tmp_path / "my set"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG fake")
    (folder / "a.txt").write_text("a caption")
    (folder / "notes.doc").write_bytes(b"doc")
    uploads: list[bytes] = []

    def s3_post(request: dict[str, Any]) -> Response:
        uploads.append(request["body"])
        return 204, b""

    upload = {"url": f"{api.url}/s3", "fields": {"key": "datasets/a/ds_1/dataset.zip", "policy": "p"}, "expires_at": "x"}
    api.routes[("POST", "/v1/datasets")] = (201, {"id": "ds_1", "status": "awaiting_upload", "name": "my set", "upload": upload})
    api.routes[("POST", "/s3")] = s3_post
    invalid = {"id": "ds_1", "name": "my set", "status": "invalid", "stats": {"images": 1, "rejected": 1},
               "errors": [{"code": "TOO_FEW_IMAGES", "message": "tiny-sd needs at least 4 images"}],
               "rejected_sample": [{"key": "notes.doc", "reason": "NOT_AN_IMAGE", "message": "not a PNG, JPEG or WEBP"}]}
    api.routes[("GET", "/v1/datasets/ds_1")] = [(200, {"id": "ds_1", "status": "validating"}), (200, invalid)]

    # When the folder is uploaded
    code = run(api, "datasets", "upload", str(folder))

    # Then the dataset was created with a valid name, the zip went in a multipart POST with the policy fields first,
    # and the rejection and errors are printed with exit code 3
    out = capsys.readouterr().out
    create = next(r for r in api.requests if r["path"] == "/v1/datasets")
    assert json.loads(create["body"]) == {"name": "my set", "kind": "images"}
    body = uploads[0]
    assert body.index(b'name="key"') < body.index(b'name="policy"') < body.index(b'name="file"')
    archive = zipfile.ZipFile(io.BytesIO(body[body.index(b"PK\x03\x04"):]))
    assert sorted(archive.namelist()) == ["a.png", "a.txt", "notes.doc"]
    assert code == 3
    assert "TOO_FEW_IMAGES: tiny-sd needs at least 4 images" in out
    assert "notes.doc: NOT_AN_IMAGE" in out


def test_drop_on_a_deployed_stack_explains_the_s3_upload(api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "mychar.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.txt", "x")
    token = "e30." + "eyJzdWIiOiJ1c2VyLTEyMyJ9" + ".sig"  # {"sub": "user-123"}

    code = main(["drop", str(archive), "--api-url", api.url, "--token", token])

    err = capsys.readouterr().err
    assert code == 1
    assert "aws s3 cp" in err and "incoming/user-123/mychar.zip" in err


def test_create_sends_the_job_body_and_idempotency_key(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("POST", "/v1/jobs")] = (201, job("queued"))

    code = run(api, "jobs", "create", "--dataset", "ds_0123456789abcdefghjk", "--preset", "tiny-sd", "--steps", "40",
               "--param", "learning_rate=0.001", "--param", "optimizer=adamw", "--trigger-word", "zxq", "--idempotency-key", "k1", "--json")

    request = api.requests[0]
    assert code == 0 and json.loads(capsys.readouterr().out)["status"] == "queued"
    assert request["headers"]["Idempotency-Key"] == "k1"
    assert json.loads(request["body"]) == {"dataset_id": "ds_0123456789abcdefghjk", "preset": "tiny-sd", "trigger_word": "zxq",
                                           "hyperparameters": {"steps": 40, "learning_rate": 0.001, "optimizer": "adamw"}}
