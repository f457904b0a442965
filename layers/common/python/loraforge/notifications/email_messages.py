"""Readable email text for job and dataset notifications (pure: no I/O).

SNS email subscribers get the subject and body as plain text; the message attributes carry
`owner`, `event`, `job_id`/`dataset_id` and `preset` so each subscription's filter policy can select
one owner's notifications (DESIGN §1).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from ..dal.keys import dataset_prefix, job_prefix
from ..models.dataset import Dataset
from ..models.errors import ErrorKind
from ..models.job import Job, JobResult
from ..models.status import JobStatus
from .cost_statement import Billing, CostStatement, attempts_in_job, cost_statement, format_seconds, measured_run_seconds, money

SUBJECT_MAX = 99
"""SNS: a subject is ASCII, one line, and fewer than 100 characters."""

_RETRY_HINT = "Retry it with `loraforge jobs retry {id}`: the new attempt resumes from the last stored checkpoint."
_NEW_JOB_HINT = "Then start a new job (`loraforge jobs create ...`); a retry would reuse the same settings."

# What a person should do next, per error code. Codes not listed fall back on the error's kind.
_NEXT_STEPS: dict[str, str] = {
    "GPU_OOM": (
        "The GPU ran out of memory with these settings. Lower hyperparameters.resolution (for example 1024 -> 768) or "
        "hyperparameters.batch_size (use gradient_accumulation instead of a bigger batch), or pick a preset for a "
        "GPU class with more memory. " + _NEW_JOB_HINT
    ),
    "DATASET_INVALID": (
        "The dataset was rejected for the reasons above. `GET /v1/datasets/{dataset_id}` lists every rejected file "
        "with its reason; fix those files, upload the dataset again, and start a new job."
    ),
    "DATASET_UNREADABLE": "The dataset archive could not be read. Upload it again (a complete .zip), then start a new job.",
    "DATASET_CHECKSUM_MISMATCH": "The dataset changed while training started. Upload it again, then start a new job.",
    "DATASET_UNSAFE": "The dataset archive contains unsafe entries (links, absolute or '..' paths). Rebuild the zip, then start a new job.",
    "INVALID_INPUT": "The training settings were refused. Check the hyperparameters against `loraforge presets`. " + _NEW_JOB_HINT,
    "UNKNOWN_ENGINE": "This preset's engine is not available on the worker. Pick another preset. " + _NEW_JOB_HINT,
    "TIMEOUT": (
        "The run reached its time limit; the last checkpoint is kept. " + _RETRY_HINT + " Fewer steps or a faster GPU class "
        "avoid another timeout."
    ),
}


class EmailMessage(BaseModel):
    subject: str = Field(max_length=SUBJECT_MAX)
    body: str
    attributes: dict[str, str] = Field(description="SNS message attributes (String): owner, event, job_id, preset")


def _subject(text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    one_line = re.sub(r"[\x00-\x1f\x7f]+", " ", ascii_text).strip()
    return one_line if len(one_line) <= SUBJECT_MAX else one_line[: SUBJECT_MAX - 3].rstrip() + "..."


def _duration(job: Job) -> str | None:
    """What an ended job took: the run time measured over its attempts (never the first start to the end, which counts queue
    waits between attempts), then the wall time since it was created."""
    if job.finished_at is None:
        return None
    since = f"{format_seconds((job.finished_at - job.created_at).total_seconds())} since created"
    run = measured_run_seconds(job)
    if run is None:
        return f"{since}; no run time measured"
    attempts = attempts_in_job(job)
    return f"run time {format_seconds(run)}" + (f" over {attempts} attempts" if attempts > 1 else "") + f"; {since}"


def job_label(job: Job) -> str:
    return f'"{job.name}"' if job.name else job.id


def job_event_name(status: JobStatus) -> str:
    return f"job.{status}"


def next_step(job: Job) -> str:
    """What the owner should do about a failed job: the retry command for system errors, what to fix for user errors."""
    if job.error is None:
        return _RETRY_HINT.format(id=job.id)
    known = _NEXT_STEPS.get(job.error.code)
    if known:
        return known.format(id=job.id, dataset_id=job.dataset_id)
    if job.error.kind == ErrorKind.USER:
        return "Fix the input the message above names. " + _NEW_JOB_HINT
    return "This was not caused by your input. " + _RETRY_HINT.format(id=job.id)


def _steps_line(job: Job) -> str:
    done = job.result.steps if job.result and job.result.steps is not None else job.progress.step
    total = job.progress.total_steps or job.hyperparameters.steps
    return f"{done} of {total}"


def _cost_rows(job: Job, statement: CostStatement) -> list[tuple[str, str | None]]:
    """The cost as `statement` states it; a running job's email shows only what is already billed (its estimate has a row)."""
    if job.status == JobStatus.RUNNING and statement.billing != Billing.PARTIAL:
        return []
    first, *more = statement.lines()
    return [("Cost", first), *(("", line) for line in more)]


def _table(rows: list[tuple[str, str | None]]) -> list[str]:
    # A row with an empty label continues the one above it.
    return [f"  {label:<12}{value}" for label, value in rows if value not in (None, "")]


def _lora_rows(result: JobResult, bucket: str) -> list[tuple[str, str | None]]:
    """Where every file of the result is (Wan 2.2 14B: one per expert, needed together), and how it was trained when a
    resumed attempt's trainer did not continue from its checkpoint."""
    rows: list[tuple[str, str | None]]
    if len(result.files) > 1:
        rows = [("LoRA", f"{len(result.files)} files, one per expert; load them together")]
        rows += [("", f"s3://{bucket}/{f.key} ({f.part or 'file'}, {f.size:,} bytes)") for f in result.files]
    else:
        lora = result.files[0] if result.files else result.lora
        rows = [("LoRA", f"s3://{bucket}/{lora.key}"), ("Size", f"{lora.size:,} bytes")] if lora else []
    resume = result.resume
    if resume is not None and not resume.honoured:
        rows.append(("Trained", f"from step {resume.started_step}: the trainer did not resume from the step-{resume.requested_step} "
                                "checkpoint, so it trained those steps again"))
    return rows


def _dataset_reasons(dataset: Dataset, limit: int = 10) -> list[str]:
    lines = [f"  {err.code}: {err.message}" for err in dataset.errors]
    lines += [f"  {item.key}: {item.reason} - {item.message}" for item in dataset.rejected_sample[:limit]]
    more = dataset.stats.rejected - min(len(dataset.rejected_sample), limit)
    if more > 0:
        lines.append(f"  ... and {more} more rejected files (the manifest lists every one)")
    return lines


def job_email(job: Job, *, previous_status: JobStatus | None, bucket: str, dataset: Dataset | None = None,
              cost: CostStatement | None = None) -> EmailMessage:
    """The notification for a job that just reached `job.status` (running, succeeded, failed or cancelled).

    `dataset`: the job's dataset, given when the failure is about it (DATASET_INVALID): its rejection reasons are listed.
    `cost`: what the webhook and EventBridge event of the same change state about the cost (default: from the job alone).
    """
    statement = cost or cost_statement(job)
    label = job_label(job)
    prefix = f"s3://{bucket}/{job_prefix(job.owner, job.id)}"
    final_loss = job.result.final_loss if job.result and job.result.final_loss is not None else job.progress.loss
    status = job.status
    headline = {
        JobStatus.RUNNING: f"Training job {label} is running.",
        JobStatus.SUCCEEDED: f"Training job {label} succeeded: your LoRA is ready.",
        JobStatus.FAILED: f"Training job {label} failed.",
        JobStatus.CANCELLED: f"Training job {label} was cancelled.",
    }.get(status, f"Training job {label} is now {status}.")
    subject = {
        JobStatus.RUNNING: f"[loraforge] {label} is running ({job.preset})",
        JobStatus.SUCCEEDED: f"[loraforge] {label} succeeded ({job.preset}, {_steps_line(job)} steps)",
        JobStatus.FAILED: f"[loraforge] {label} failed: {job.error.code if job.error else 'error'}",
        JobStatus.CANCELLED: f"[loraforge] {label} cancelled at step {_steps_line(job)}",
    }.get(status, f"[loraforge] {label} is {status}")

    lines = [headline, ""]
    lines += _table([
        ("Job", f"{job.id}" + (f" ({job.name})" if job.name else "")),
        ("Preset", job.preset),
        ("Status", f"{status}" + (f" (was {previous_status})" if previous_status else "")),
        ("Dataset", job.dataset_id),
        ("Attempt", str(job.attempts) if job.attempts > 1 else None),
        ("GPU", job.gpu_class),
        ("Duration", _duration(job)),
        ("Steps", _steps_line(job)),
        ("Final loss" if status == JobStatus.SUCCEEDED else "Last loss", f"{final_loss:.4f}" if final_loss is not None else None),
        *_cost_rows(job, statement),
    ])
    if status == JobStatus.RUNNING and job.estimate is not None:
        lines += _table([("Estimate", f"about {format_seconds(job.estimate.seconds)}, {money(job.estimate.cost_usd)}")])
    if status == JobStatus.FAILED:
        error = job.error
        lines += ["", "What went wrong"]
        lines += _table([
            ("Error", f"{error.code} ({error.kind} error)" if error else "unknown (no error was recorded)"),
            ("Message", error.message if error else None),
        ])
        if dataset is not None and (dataset.errors or dataset.rejected_sample):
            lines += ["", f"Why dataset {dataset.id} was rejected"] + _dataset_reasons(dataset)
        lines += ["", "What to do next", f"  {next_step(job)}"]
    if status == JobStatus.CANCELLED:
        lines += ["", "What to do next", "  " + _RETRY_HINT.format(id=job.id)]

    lines += ["", "Artifacts"]
    if status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED) and job.result and job.result.lora:
        lines += _table(_lora_rows(job.result, bucket))
    if status == JobStatus.RUNNING:
        lines += _table([("Follow", f"loraforge jobs watch {job.id}"), ("Files", f"{prefix} (checkpoints/, samples/ as they arrive)")])
    else:
        lines += _table([
            ("All files", f"{prefix} (checkpoints/, samples/, final/, logs/)"),
            ("Download", f"loraforge jobs download {job.id}"
             + (" (or --checkpoint STEP for a stored checkpoint)" if status != JobStatus.SUCCEEDED else "")),
        ])
    lines += ["", f"Details: loraforge jobs show {job.id}", "",
              f"-- loraforge notifications for owner {job.owner}. Unsubscribe with the link below."]
    attributes = {"owner": job.owner, "event": job_event_name(status), "job_id": job.id, "preset": job.preset}
    return EmailMessage(subject=_subject(subject), body="\n".join(lines) + "\n", attributes=attributes)


def dataset_email(dataset: Dataset, *, bucket: str, rejected_limit: int = 10) -> EmailMessage:
    """The notification for a dataset that validation rejected."""
    label = f'"{dataset.name}"'
    lines = [f"Dataset {label} ({dataset.id}) is invalid: no job can train on it.", ""]
    lines += _table([
        ("Dataset", dataset.id),
        ("Status", str(dataset.status)),
        ("Images", f"{dataset.stats.images} accepted, {dataset.stats.rejected} rejected"),
        ("Job", dataset.job_id),
    ])
    if dataset.errors or dataset.rejected_sample:
        lines += ["", "Why"] + _dataset_reasons(dataset, rejected_limit)
    lines += [
        "", "What to do next",
        "  Fix or remove the files listed above, then upload the dataset again (`loraforge datasets upload DIR|ZIP`,",
        "  or drop the zip under incoming/<owner>/ again). Images need a same-name .txt caption or a trigger word.",
        "", "Details",
        f"  Manifest    s3://{bucket}/{dataset.manifest_key or dataset_prefix(dataset.owner, dataset.id) + 'manifest.json'}",
        f"  API         GET /v1/datasets/{dataset.id}",
        "", f"-- loraforge notifications for owner {dataset.owner}. Unsubscribe with the link below.",
    ]
    first_reason = dataset.errors[0].code if dataset.errors else "rejected"
    attributes = {"owner": dataset.owner, "event": "dataset.invalid", "dataset_id": dataset.id}
    if dataset.job_id:
        attributes["job_id"] = dataset.job_id
    return EmailMessage(subject=_subject(f"[loraforge] dataset {label} is invalid: {first_reason}"), body="\n".join(lines) + "\n",
                        attributes=attributes)
