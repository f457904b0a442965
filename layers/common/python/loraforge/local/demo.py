"""`loraforge demo`: the whole main job on this machine, in one command.

Starts the local stack in this process, builds a small real dataset (photos bundled with
scikit-image, 64 px, captioned), drops it to train under `incoming/<owner>/`, follows the job with
the progress bar to `succeeded`, downloads the LoRA, draws its loss curve next to it, shows the
notification that would have been emailed (the SNS message, read back from moto) and prints a
summary. Exit code 0 only when the job succeeded and its LoRA downloaded intact.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ..cli.common import ApiClient, LocalState, Target, download_url
from ..cli.drop import find_dropped_dataset, local_s3_client, wait_for_job_id
from ..cli.progress import Watcher, artifact_rows, format_bytes, format_duration, list_artifacts
from .demo_dataset import build_demo_dataset, zip_dataset
from .stack import REGION, LocalStack, LocalStackConfig

DEMO_USER = "alice"
JOB_TIMEOUT_SECONDS = 600.0


@dataclass
class DemoResult:
    job: dict[str, Any]
    lora_path: Path | None = None
    loss_curve: Path | None = None
    notification: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        progress = self.job.get("progress") or {}
        return {
            "job_id": self.job.get("id"), "status": self.job.get("status"), "preset": self.job.get("preset"),
            "steps": progress.get("step"), "total_steps": progress.get("total_steps"), "final_loss": progress.get("loss"),
            "lora": str(self.lora_path) if self.lora_path else None, "loss_curve": str(self.loss_curve) if self.loss_curve else None,
            "artifact_keys": [a.get("key") for a in self.job.get("artifacts") or []],
            "notification_subject": (self.notification or {}).get("subject"), "timings_seconds": {k: round(v, 2) for k, v in self.timings.items()},
        }


def draw_loss_curve(points: list[tuple[int, float]], path: Path, *, title: str = "training loss") -> Path:
    """A plain line chart with Pillow (no matplotlib): loss against step, axes labelled with min/max."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 360, 56
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = margin, 32, width - 24, height - margin
    draw.rectangle((left, top, right, bottom), outline="#888888")
    draw.text((left, 10), title, fill="black")
    if points:
        steps = [p[0] for p in points]
        losses = [p[1] for p in points]
        s_min, s_max = min(steps), max(steps)
        l_min, l_max = min(losses), max(losses)
        s_span = (s_max - s_min) or 1
        l_span = (l_max - l_min) or (abs(l_max) or 1.0)

        def xy(step: int, loss: float) -> tuple[float, float]:
            return (left + (step - s_min) / s_span * (right - left), bottom - (loss - l_min) / l_span * (bottom - top))

        coords = [xy(s, v) for s, v in points]
        if len(coords) > 1:
            draw.line(coords, fill="#9ecae1", width=1)
        for x, y in coords:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill="#6baed6")
        # Per-step loss on a handful of images is noisy: an exponential moving average shows the trend.
        smoothed, ema = [], losses[0]
        for step, loss in points:
            ema = 0.8 * ema + 0.2 * loss
            smoothed.append(xy(step, ema))
        if len(smoothed) > 1:
            draw.line(smoothed, fill="#08519c", width=3)
        draw.text((right - 220, 10), "dots: loss per step   line: moving average", fill="#08519c")
        draw.text((4, top - 4), f"{l_max:.4f}", fill="black")
        draw.text((4, bottom - 8), f"{l_min:.4f}", fill="black")
        draw.text((left, bottom + 8), f"step {s_min}", fill="black")
        draw.text((right - 64, bottom + 8), f"step {s_max}", fill="black")
    else:
        draw.text((left + 16, (top + bottom) // 2), "no loss points recorded", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def loss_points(metrics: Any) -> list[tuple[int, float]]:
    items = metrics.get("items", []) if isinstance(metrics, dict) else list(metrics or [])
    points = [(int(m["step"]), float(m["loss"])) for m in items if isinstance(m, dict) and m.get("loss") is not None and m.get("step") is not None]
    return sorted(points)


def safetensors_summary(path: Path) -> str:
    """Tensor count and metadata keys from the file's JSON header (no torch needed)."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    tensors = [k for k in header if k != "__metadata__"]
    return f"{len(tensors)} tensors"


def sns_messages_for(topic_arn: str, job_id: str) -> list[dict[str, Any]]:
    """What the topic published about this job, read from moto's backend (this process runs the moto server)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    topic = sns_backends[DEFAULT_ACCOUNT_ID][REGION].topics.get(topic_arn)
    found = []
    for message_id, message, subject, attributes, _group in list(topic.sent_notifications if topic else []):
        values = {name: _attribute_value(attr) for name, attr in (attributes or {}).items()}
        if values.get("job_id") == job_id or job_id in (message or ""):
            found.append({"message_id": message_id, "subject": subject, "message": message, "attributes": values})
    return found


def _attribute_value(attribute: Any) -> Any:
    return (attribute.get("Value") or attribute.get("StringValue")) if isinstance(attribute, dict) else attribute


def wait_for_notification(topic_arn: str, job_id: str, event: str, timeout: float = 15.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in sns_messages_for(topic_arn, job_id):
            if message["attributes"].get("event") in (event, f"job.{event}") or event in (message.get("subject") or "").lower():
                return message
        time.sleep(0.2)
    messages = sns_messages_for(topic_arn, job_id)
    return messages[-1] if messages else None


def _print(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")
    out.flush()


def run_demo(output_dir: Path, *, workers: int = 1, state_dir: Path = Path(".loraforge"), out: TextIO | None = None,
             poll_interval: float = 0.2) -> DemoResult:
    out = out or sys.stdout
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    _print(out, "loraforge demo — the whole main job on this machine (moto S3/DynamoDB/SNS, RunPod emulator, CPU trainer)")
    _print(out, f"starting the local stack ({workers} worker{'s' if workers != 1 else ''})…")
    with LocalStack(LocalStackConfig(state_dir=state_dir, workers=workers, poll_interval=poll_interval)) as stack:
        timings["startup"] = time.perf_counter() - t0
        info = stack.info
        _print(out, f"  API {info['api_url']}   S3 {info['aws_endpoint_url']}   RunPod {info['runpod_url']}   ({timings['startup']:.1f} s)")
        target = Target(api_url=info["api_url"], token=stack.tokens[DEMO_USER], local=LocalState(**info), user=DEMO_USER)
        with ApiClient(target) as api:
            dataset_dir = build_demo_dataset(output_dir / "dataset")
            archive = zip_dataset(dataset_dir, output_dir / "demo.zip")
            key = f"incoming/{DEMO_USER}/demo.zip"
            images = len(list(dataset_dir.glob("*.png")))
            t_drop = time.perf_counter()
            since = datetime.now(UTC) - timedelta(seconds=5)
            local_s3_client(target.local).upload_file(str(archive), info["bucket"], key)  # type: ignore[arg-type]
            _print(out, f"dropped {images} captioned photos (64 px) + loraforge.yaml → s3://{info['bucket']}/{key}")
            dataset = wait_for_job_id(api, find_dropped_dataset(api, key, since=since, timeout=120), timeout=120)
            if dataset.get("status") != "ready":
                _print(out, f"dataset {dataset.get('id')} is {dataset.get('status')}: {dataset.get('errors')}")
                return DemoResult(job={}, timings=timings)
            job_id = dataset["job_id"]
            _print(out, f"dataset {dataset['id']} ready ({(dataset.get('stats') or {}).get('images')} images) → job {job_id} queued")
            job = Watcher(api, job_id, out=out, interval=0.25).run(timeout=JOB_TIMEOUT_SECONDS)
            t_done = time.perf_counter()
            timings["pipeline"] = t_done - t_drop
            result = DemoResult(job=job, timings=timings)
            if job.get("status") != "succeeded":
                error = job.get("error") or {}
                _print(out, f"job {job_id} ended {job.get('status')}: {error.get('code')}: {error.get('message')}")
                _print(out, f"logs: {stack.log_path}")
                return result
            _finalise(api, stack, job, output_dir, result, out)
            timings["finalisation"] = time.perf_counter() - t_done
            timings["total"] = time.perf_counter() - t0
            started, finished = _time(job.get("started_at")), _time(job.get("finished_at"))
            if started and finished:
                timings["training"] = (finished - started).total_seconds()
            _summary(job, result, out)
            return result


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _finalise(api: ApiClient, stack: LocalStack, job: dict[str, Any], output_dir: Path, result: DemoResult, out: TextIO) -> None:
    artifacts = list_artifacts(api, job["id"])
    result.job["artifacts"] = artifacts
    final = next((a for a in artifacts if a.get("kind") == "final"), None)
    if final is not None:
        name = final.get("name") or str(final["key"]).rsplit("/", 1)[-1]
        result.lora_path = output_dir / name
        download_url(final["url"], result.lora_path, expected_sha256=final.get("sha256"))
        details = f"{format_bytes(final.get('size'))}, {safetensors_summary(result.lora_path)}, sha256 verified"
        _print(out, f"downloaded the LoRA → {result.lora_path} ({details})")
    points = loss_points(api.get(f"/v1/jobs/{job['id']}/metrics"))
    result.loss_curve = draw_loss_curve(points, output_dir / "loss.png", title=f"{job['id']} training loss ({job.get('preset')})")
    _print(out, f"loss curve ({len(points)} points) → {result.loss_curve}")
    _print(out, "artifacts:")
    _print(out, "  " + artifact_rows(artifacts).replace("\n", "\n  "))
    result.notification = wait_for_notification(stack.info["topic_arn"], job["id"], "succeeded")
    _print(out, "")
    if result.notification:
        _print(out, "the notification that would have been emailed (SNS):")
        _print(out, f"  Subject: {result.notification.get('subject')}")
        for line in str(result.notification.get("message") or "").splitlines():
            _print(out, f"  | {line}")
    else:
        _print(out, "no SNS notification was published for this job (see the stack log)")


def _summary(job: dict[str, Any], result: DemoResult, out: TextIO) -> None:
    progress = job.get("progress") or {}
    timings = result.timings
    loss = progress.get("loss")
    _print(out, "")
    _print(out, "summary")
    _print(out, f"  job          {job['id']} ({job.get('status')}, preset {job.get('preset')})")
    _print(out, f"  steps        {progress.get('step')}/{progress.get('total_steps')}")
    _print(out, f"  final loss   {loss:.4f}" if isinstance(loss, int | float) else "  final loss   -")
    _print(out, f"  duration     {format_duration(timings.get('pipeline'))} from drop to succeeded "
                f"(training {timings.get('training', 0):.1f} s; stack start-up {timings.get('startup', 0):.1f} s; "
                f"finalisation {timings.get('finalisation', 0):.1f} s; total {timings.get('total', 0):.1f} s)")
    _print(out, f"  LoRA         {result.lora_path}")
    _print(out, f"  loss curve   {result.loss_curve}")
    _print(out, "  artifact keys:")
    for artifact in job.get("artifacts") or []:
        _print(out, f"    {artifact.get('key')}")
