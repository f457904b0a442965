"""Ingest: an S3 "Object Created" event → a validated dataset (and, for drop-to-train, a queued job).

Two triggers (DESIGN §1, §3):
- `datasets/<owner>/<id>/dataset.zip`, uploaded through the API's presigned POST: validate that
  dataset (it is `awaiting_upload`) against the generic rules of its kind (`datasets.rules`).
- `incoming/<owner>/<name>.zip`, or `incoming/<owner>/<name>/loraforge.yaml` (folder mode, the yaml
  last): `drop_to_train.ingest_drop`.
Every other key is ignored with a reason (folder files, our own manifest.json, unknown datasets…).

Failures that are the user's (a bad archive, a bad loraforge.yaml) end as a dataset in `invalid`
with reason codes and never raise. Failures that are not (S3 or DynamoDB errors, throttling) are
logged and raised, so the event source retries and finally dead-letters the event; every step is
safe to repeat, so a retry finishes the work (the dataset stays `validating` until then).

Idempotency (conditional writes, no extra records): an API dataset moves awaiting_upload →
validating → ready|invalid with version-conditional writes, and once ready or invalid a later event
for its key is ignored (ALREADY_VALIDATED). Drop datasets are keyed in `drop_to_train`.
"""

from __future__ import annotations

import hashlib
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..datasets.archive import ArchiveLimits, SafeArchive, UnsafeArchive
from ..datasets.drop_config import find_config_entry
from ..datasets.rules import ValidationRules, generic_rules
from ..datasets.validate import ValidationReport, validate_archive
from ..models.dataset import Dataset
from ..models.errors import InvalidTransition
from ..models.status import DatasetStatus
from ..observability import logger, metrics
from ..settings import get_settings

DOWNLOAD_CHUNK = 1024**2
REJECTED_SAMPLE = 20
_MISSING_OBJECT = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}


class IngestAction(StrEnum):
    VALIDATED = "validated"
    """A dataset was validated by this event (status ready or invalid)."""
    DUPLICATE = "duplicate"
    """This object was ingested before (a redelivery, or the same content again): nothing new was done."""
    IGNORED = "ignored"
    """Not work for ingest (see `reason`)."""


class IngestOutcome(BaseModel):
    """What one event did. `reason` is a stable code; `message` says it for a person."""

    action: IngestAction
    reason: str = Field(description="VALIDATED | DUPLICATE_EVENT | ALREADY_VALIDATED | UNKNOWN_DATASET | NOT_A_TRIGGER_KEY | "
                                    "FOLDER_FILE | DROP_ARCHIVE_COPY | WRONG_BUCKET | JOB_CREATION_IN_PROGRESS")
    message: str
    key: str
    dataset_id: str | None = None
    dataset_status: DatasetStatus | None = None
    job_id: str | None = None
    errors: list[str] = Field(default_factory=list, description="Reason codes that made the dataset invalid")
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def ignored(cls, key: str, reason: str, message: str, **fields: Any) -> IngestOutcome:
        return cls(action=IngestAction.IGNORED, reason=reason, message=message, key=key, **fields)

    @classmethod
    def for_dataset(cls, action: IngestAction, reason: str, message: str, key: str, dataset: Dataset) -> IngestOutcome:
        return cls(action=action, reason=reason, message=message, key=key, dataset_id=dataset.id, dataset_status=dataset.status,
                   job_id=dataset.job_id, errors=[e.code for e in dataset.errors], warnings=dataset.warnings)


def object_key_of_event(raw_key: str) -> str:
    """The object an S3 Object Created event names. S3's own notifications form-encode keys (' ' is '+'); whether the
    EventBridge ones do is not documented, and a real-AWS report says they do not. So a key that decoding changes is
    checked: the decoded key when it names an object, else the key as sent when that one does (1-2 HEADs, only for
    trigger keys with '%' or '+'; a drop named `c++.zip` must not become `c  .zip`)."""
    decoded = keys.decode_event_key(raw_key)
    if decoded == raw_key or not any(_starts_ingest(k) for k in (decoded, raw_key)):
        return decoded  # nothing to tell apart, or a key ingest ignores anyway: no I/O
    storage = Storage()
    if storage.head(decoded) is None and storage.head(raw_key) is not None:
        return raw_key
    return decoded


def _starts_ingest(key: str) -> bool:
    return keys.parse_dataset_archive_key(key) is not None or keys.parse_drop_key(key) is not None


def ingest_object(bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None, *,
                  lambda_context: Any = None) -> IngestOutcome:
    """Handle one created object. `key` is the object's real key (object_key_of_event)."""
    log_keys = {"bucket": bucket, "key": key, "version_id": version_id, "etag": etag, "size": size}
    try:
        if bucket != get_settings().bucket_name:
            outcome = IngestOutcome.ignored(key, "WRONG_BUCKET", f"bucket {bucket} is not this deployment's data bucket")
        elif (archive_ref := keys.parse_dataset_archive_key(key)) is not None:
            outcome = ingest_api_upload(archive_ref, key=key, version_id=version_id, size=size)
        elif (drop_ref := keys.parse_drop_key(key)) is not None:
            from .drop_to_train import ingest_drop  # drop_to_train builds on this module's helpers

            outcome = ingest_drop(drop_ref, version_id=version_id, etag=etag, size=size, lambda_context=lambda_context)
        elif key.startswith(keys.INCOMING):
            outcome = IngestOutcome.ignored(key, "FOLDER_FILE", "a file of a drop folder, or not a drop; the folder's "
                                            f"{keys.DROP_CONFIG_NAME} (uploaded last) or a .zip directly under incoming/<owner>/ starts ingest")
        else:
            outcome = IngestOutcome.ignored(key, "NOT_A_TRIGGER_KEY", "not a dataset upload or a drop")
    except Exception:
        metrics.add_metric(name="IngestFailed", unit=MetricUnit.Count, value=1)
        logger.exception("ingest failed for a reason that is not the upload's; the event will be retried, then dead-lettered to IngestDLQ",
                         extra=log_keys)
        raise
    log = {"FOLDER_FILE": logger.debug, "NOT_A_TRIGGER_KEY": logger.debug, "WRONG_BUCKET": logger.warning}.get(outcome.reason, logger.info)
    metrics.add_metric(name=f"Ingest{outcome.action.value.title()}", unit=MetricUnit.Count, value=1)
    summary = outcome.model_dump(mode="json", exclude={"key", "warnings", "message"})
    log(f"ingest outcome: {outcome.message}", extra={**log_keys, **summary})
    return outcome


# -- the API upload path ---------------------------------------------------------------------------
def ingest_api_upload(ref: keys.DatasetArchiveRef, *, key: str, version_id: str | None, size: int | None) -> IngestOutcome:
    table = JobsTable()
    dataset = table.get_dataset(ref.dataset_id) if ref.dataset_id.startswith("ds_") else None
    if dataset is None or dataset.owner != ref.owner:
        logger.warning("upload for an unknown dataset (or another owner's path) ignored", extra={"key": key})
        return IngestOutcome.ignored(key, "UNKNOWN_DATASET", f"no dataset {ref.dataset_id} belongs to owner {ref.owner}")
    if dataset.source_key is not None:
        return IngestOutcome.for_dataset(IngestAction.IGNORED, "DROP_ARCHIVE_COPY",
                                         "the archive of a drop-to-train dataset, written by ingest itself", key, dataset)
    if dataset.status in (DatasetStatus.READY, DatasetStatus.INVALID):
        logger.info("upload for an already validated dataset ignored", extra={"key": key, "dataset_id": dataset.id})
        return IngestOutcome.for_dataset(IngestAction.IGNORED, "ALREADY_VALIDATED",
                                         f"dataset {dataset.id} is already {dataset.status}; a dataset is validated once, "
                                         "so create a new dataset to upload different data", key, dataset)
    if dataset.status == DatasetStatus.AWAITING_UPLOAD:
        try:
            dataset = table.save_dataset(dataset.model_copy(update={"status": DatasetStatus.VALIDATING}),
                                         expected_version=dataset.version, expected_status=DatasetStatus.AWAITING_UPLOAD)
        except InvalidTransition:
            dataset = table.get_dataset(dataset.id) or dataset  # a duplicate event got there first: validate alongside it
    if dataset.status != DatasetStatus.VALIDATING:
        return IngestOutcome.for_dataset(IngestAction.DUPLICATE, "DUPLICATE_EVENT", "another delivery of this event validated it", key,
                                         dataset)
    with tempfile.TemporaryDirectory(prefix="ingest-") as scratch:
        local = Path(scratch) / "dataset.zip"
        download = fetch_object(key, version_id, size, local)
        if isinstance(download, ValidationReport):
            report, sha, archive_size = download, None, size
        else:
            sha, archive_size = download
            report = validate_file(local, generic_rules(dataset.kind))
    saved, won = save_validation(dataset, report, archive_sha256=sha, archive_size=archive_size)
    return validated_outcome(saved, key, won=won)


# -- shared by both paths --------------------------------------------------------------------------
def archive_limits() -> ArchiveLimits:
    """Limits from MAX_DATASET_BYTES: the zip itself up to it, inflated up to twice it (images barely compress)."""
    max_bytes = get_settings().max_dataset_bytes
    return ArchiveLimits(max_archive_bytes=max_bytes, max_total_uncompressed_bytes=2 * max_bytes,
                         max_entry_bytes=min(ArchiveLimits().max_entry_bytes, 2 * max_bytes))


def too_large(size: int | None) -> ValidationReport | None:
    limit = get_settings().max_dataset_bytes
    if size is not None and size > limit:
        return ValidationReport.refused("ARCHIVE_TOO_LARGE", f"the upload is {size} bytes; the limit is {limit} bytes (MAX_DATASET_BYTES)")
    return None


def is_missing_object(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_OBJECT


def fetch_object(key: str, version_id: str | None, size: int | None, dest: Path) -> tuple[str, int] | ValidationReport:
    """Stream one object version to `dest` (sha256 while reading). A report instead when it is too large or gone."""
    if (refused := too_large(size)) is not None:
        return refused
    limit = get_settings().max_dataset_bytes
    try:
        body = Storage().open(key, version_id=version_id)
    except ClientError as exc:
        if is_missing_object(exc):
            return ValidationReport.refused("SOURCE_MISSING", "the uploaded object was deleted before it could be read; upload it again")
        raise
    digest = hashlib.sha256()
    written = 0
    with dest.open("wb") as out:
        while chunk := body.read(DOWNLOAD_CHUNK):
            written += len(chunk)
            if written > limit:
                body.close()
                return ValidationReport.refused("ARCHIVE_TOO_LARGE", f"the upload is larger than {limit} bytes (MAX_DATASET_BYTES)")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), written


def validate_file(path: Path, rules: ValidationRules) -> ValidationReport:
    """Open `path` safely and validate it against `rules`; an unsafe archive becomes a refused report.

    A loraforge.yaml in an API upload (the same zip used for a drop) is not data and not an error: skipped.
    """
    try:
        with SafeArchive.open(path, archive_limits()) as archive:
            config = find_config_entry(archive.files)
            return validate_archive(archive, rules, skip=frozenset({config.path}) if config else frozenset())
    except UnsafeArchive as exc:
        return ValidationReport.refused(exc.code, exc.message)


def save_validation(dataset: Dataset, report: ValidationReport, *, archive_sha256: str | None,
                    archive_size: int | None) -> tuple[Dataset, bool]:
    """Write manifest.json, then move the dataset from validating to ready|invalid (conditional on its version).

    Returns the dataset as stored and whether this call made the change (False: a duplicate delivery won).
    """
    table = JobsTable()
    manifest_key = keys.dataset_manifest_key(dataset.owner, dataset.id)
    manifest = report.manifest(dataset_id=dataset.id, archive_key=dataset.archive_key, archive_sha256=archive_sha256,
                               archive_size=archive_size)
    Storage().put_json(manifest_key, manifest.model_dump(mode="json"))
    status = DatasetStatus.READY if report.ok else DatasetStatus.INVALID
    updated = dataset.model_copy(update={
        "status": status, "manifest_key": manifest_key, "archive_sha256": archive_sha256, "archive_size": archive_size,
        "stats": report.stats, "warnings": report.warnings, "errors": report.errors, "rejected_sample": report.rejected[:REJECTED_SAMPLE],
    })
    try:
        saved = table.save_dataset(updated, expected_version=dataset.version, expected_status=DatasetStatus.VALIDATING)
    except InvalidTransition:
        return table.get_dataset(dataset.id) or dataset, False
    metrics.add_metric(name="DatasetsReady" if saved.status == DatasetStatus.READY else "DatasetsInvalid", unit=MetricUnit.Count, value=1)
    return saved, True


def validated_outcome(dataset: Dataset, key: str, *, won: bool, extra: str = "") -> IngestOutcome:
    if not won:
        return IngestOutcome.for_dataset(IngestAction.DUPLICATE, "DUPLICATE_EVENT",
                                         "another delivery of this event finished the validation first", key, dataset)
    if dataset.status == DatasetStatus.READY:
        message = f"dataset {dataset.id} is ready: {dataset.stats.images} images, {dataset.stats.rejected} files left out{extra}"
    else:
        message = f"dataset {dataset.id} is invalid: " + "; ".join(f"{e.code}: {e.message}" for e in dataset.errors)
    return IngestOutcome.for_dataset(IngestAction.VALIDATED, "VALIDATED", message, key, dataset)
