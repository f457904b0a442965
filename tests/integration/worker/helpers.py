"""Shared pieces of the worker tests: datasets, WorkerInputs with real presigned URLs (moto), a signed-event receiver."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from loraforge.contract import Callback, DatasetSource, Engine, OutputTarget, ResumeFrom, TrainingSpec, WorkerInput
from loraforge.dal import keys
from loraforge.dal.storage import Storage
from loraforge.datasets.archive import SafeArchive
from loraforge.datasets.rules import rules_for_preset
from loraforge.datasets.validate import validate_archive
from loraforge.models.dataset import DatasetManifest
from loraforge.presets import build_training_spec, get_preset, resolve_hyperparameters

REPO = Path(__file__).resolve().parents[3]
FAKE_AITOOLKIT = REPO / "tests" / "support" / "fake_aitoolkit.py"
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 210, 20)]
COLOUR_NAMES = ["red", "green", "blue", "yellow"]


def image_bytes(index: int, size: int = 64, fmt: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    (draw.ellipse if index % 2 == 0 else draw.rectangle)(box, fill=COLOURS[index % 4])
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def dataset_zip(count: int = 8, size: int = 64, *, folder: str = "mychar/", captions: bool = True,
                extra: dict[str, bytes] | None = None, fmt: str = "PNG") -> bytes:
    """A zip of generated images (circles and squares in four colours) with same-name .txt captions."""
    out = io.BytesIO()
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            zf.writestr(f"{folder}img_{i:03d}.{ext}", image_bytes(i, size, fmt))
            if captions:
                shape = "circle" if i % 2 == 0 else "square"
                zf.writestr(f"{folder}img_{i:03d}.txt", f"a photo of [trigger], a {COLOUR_NAMES[i % 4]} {shape}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out.getvalue()


def mixed_dataset_zip() -> bytes:
    """Four good images (set/a.png, b.png, c.png, d.jpg), plus what ingest rejects one by one: a duplicate, an image below
    tiny-sd's min_side (32 px) and an image whose caption is not UTF-8 (ingest leaves the pair out). a.txt needs normalising."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {
            "set/a.png": image_bytes(0), "set/a.txt": "\ufeffa photo of  [trigger]\r\n smiling ".encode(),
            "set/b.png": image_bytes(1),
            "set/c.png": image_bytes(2), "set/c.txt": b"ohwx in the rain",
            "set/d.jpg": image_bytes(3, fmt="JPEG"), "set/d.txt": b"a red square",
            "set/copy_of_a.png": image_bytes(0),
            "set/tiny.png": image_bytes(1, size=16), "set/tiny.txt": b"too small",
            "set/latin1.png": image_bytes(2, size=48), "set/latin1.txt": "caf\xe9".encode("latin-1"),
        }.items():
            zf.writestr(name, data)
    return out.getvalue()


def ingest_manifest(zip_path: Path, preset: str = "tiny-sd", *, archive_sha256: str | None = None) -> DatasetManifest:
    """The manifest ingest writes for this archive (the ingest's own validator, the preset's rules)."""
    with SafeArchive.open(zip_path) as archive:
        report = validate_archive(archive, rules_for_preset(preset))
    assert report.ok, report.errors
    return report.manifest(dataset_id="ds_test", archive_key="datasets/u/ds_test/dataset.zip", archive_sha256=archive_sha256,
                           archive_size=zip_path.stat().st_size)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def tiny_sd_spec(steps: int = 12, checkpoint_every: int = 4, sample_every: int | None = None, trigger: str = "sks") -> TrainingSpec:
    preset = get_preset("tiny-sd")
    spec = build_training_spec(preset, resolve_hyperparameters(preset, {"steps": steps}), trigger_word=trigger)
    return spec.model_copy(update={"checkpoint_every": checkpoint_every, "sample_every": sample_every or checkpoint_every})


def aitoolkit_spec(preset_id: str = "sd15", steps: int = 6, checkpoint_every: int = 2, sample_every: int = 3) -> TrainingSpec:
    preset = get_preset(preset_id)
    spec = build_training_spec(preset, resolve_hyperparameters(preset, {}), trigger_word="ohwx")
    hp = spec.hyperparameters.model_copy(update={"steps": steps})
    return spec.model_copy(update={"hyperparameters": hp, "checkpoint_every": checkpoint_every, "sample_every": sample_every})


@dataclass
class StoredDataset:
    key: str
    sha256: str
    size: int


def put_dataset(storage: Storage, owner: str, dataset_id: str, data: bytes) -> StoredDataset:
    import hashlib

    key = keys.dataset_archive_key(owner, dataset_id)
    storage.put_bytes(key, data, "application/zip")
    return StoredDataset(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def worker_input(storage: Storage, *, job_id: str, owner: str, engine: Engine, spec: TrainingSpec, dataset: StoredDataset,
                 callback_url: str | None, secret: str, attempt: int = 1, resume: ResumeFrom | None = None,
                 time_limit_seconds: int = 600, dataset_url: str | None = None, min_interval_seconds: float = 0.0,
                 manifest_url: str | None = None) -> WorkerInput:
    url = dataset_url or storage.presigned_get(dataset.key, 3600)[0]
    post = storage.job_output_post(owner, job_id, 3600)
    return WorkerInput(
        job_id=job_id, attempt=attempt, dispatch_token=f"tok-{job_id}", engine=engine, spec=spec,
        dataset=DatasetSource(url=url, sha256=dataset.sha256, size=dataset.size, manifest_url=manifest_url),
        output=OutputTarget(url=post["url"], fields=post["fields"], prefix=keys.job_prefix(owner, job_id), max_bytes=512 * 1024**2),
        callback=Callback(url=callback_url, secret=secret, min_interval_seconds=min_interval_seconds) if callback_url else None,
        resume=resume, time_limit_seconds=time_limit_seconds,
    )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    event: dict[str, Any]
    verified: bool


@dataclass
class CallbackReceiver:
    """A loopback webhook receiver that verifies Standard Webhooks signatures with the reference library."""

    secret: str
    responses: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    blocked_paths: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> CallbackReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                code = receiver.blocked_paths.get(self.path, 404)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except Exception:  # noqa: BLE001 - recorded, asserted by the tests
                    verified = False
                event = json.loads(body) if body else {}
                receiver.received.append(Received(headers, body, event, verified))
                code = receiver.responses.get(event.get("type", ""), 200)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/hooks/worker/job"

    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in list(self.received) if job_id is None or r.event.get("job_id") == job_id]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0, job_id: str | None = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(job_id)
            if predicate(events):
                return events
            time.sleep(0.05)
        raise TimeoutError(f"condition not met; events so far: {[e.get('type') for e in self.events(job_id)]}")


def fake_toolkit_dir(tmp: Path) -> Path:
    """A folder that looks like an AI-Toolkit checkout whose run.py is the test double."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "run.py").write_text(FAKE_AITOOLKIT.read_text())
    return tmp


def objects_under(storage: Storage, prefix: str) -> dict[str, dict[str, Any]]:
    return {obj["Key"]: obj for obj in storage.list_keys(prefix)}


def read_object(storage: Storage, key: str) -> bytes:
    body = storage.open(key)
    try:
        return body.read()
    finally:
        body.close()


def env_with(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(values)
    return env
