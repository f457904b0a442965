"""Drop-to-train: `incoming/<owner>/<name>.zip` or a folder `incoming/<owner>/<name>/` + `loraforge.yaml` → dataset → job.

Steps: create the Dataset (`validating`, name from the zip/folder), get the archive (zip: the object
version the event names; folder: a zip built from the folder's files, streamed object by object),
read and check `loraforge.yaml` (the zip's own, or the folder's trigger file), validate against the
yaml's preset (default `tiny-sd`), copy the archive to `datasets/<owner>/<id>/dataset.zip`, write
manifest.json, set `ready|invalid`, and when ready queue ONE job through `create_job(source=drop)`
and record its id on the dataset. A bad yaml or unknown preset makes the dataset `invalid` with
INVALID_DROP_CONFIG / UNKNOWN_PRESET (or the job-option code) and creates no job.

Idempotency: the dataset id is derived from sha256(bucket/key + content identity), where the
identity is the object's ETag (zip) or the ETags of the folder's files and of the yaml (folder). So
the same event twice, two events for one object version, or the same zip uploaded again to the same
key all land on ONE dataset (conditional create), and the job is created with `create_job`'s
idempotency keyed by that dataset id: at most one job. A different zip at the same key is new work.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..datasets.archive import SafeArchive, UnsafeArchive
from ..datasets.drop_config import MAX_DROP_CONFIG_BYTES, DropConfigError, dataset_name, find_config_entry, parse_drop_config
from ..datasets.rules import ValidationRules, generic_rules, rules_for_preset
from ..datasets.validate import MEDIA_SUFFIXES, ValidationReport, validate_archive
from ..models.common import stable_id, utcnow
from ..models.dataset import Dataset, DatasetError, DatasetKind
from ..models.errors import Conflict, InvalidTransition, LoraforgeError
from ..models.job import JobSource
from ..models.requests import CreateJobRequest, DropConfig
from ..models.status import DatasetStatus
from ..observability import logger, metrics
from .create_job import create_job
from .estimate_job import plan_job
from .ingest_dataset import (
    DOWNLOAD_CHUNK,
    IngestAction,
    IngestOutcome,
    archive_limits,
    fetch_object,
    is_missing_object,
    save_validation,
    too_large,
    validated_outcome,
)

RECENT_JOBS_SCANNED = 25


def drop_dataset_id(bucket: str, key: str, content_identity: str) -> str:
    """A dataset id derived from the drop (bucket, key, content identity): every delivery of one drop names one dataset."""
    return stable_id("ds", bucket, key, content_identity)


def ingest_drop(ref: keys.DropRef, *, version_id: str | None, etag: str | None, size: int | None,
                lambda_context: Any = None) -> IngestOutcome:
    storage, table = Storage(), JobsTable()
    folder_files: list[dict[str, Any]] = []
    identity = etag or version_id or ""
    if ref.is_folder:
        listing = storage.list_keys(ref.folder_prefix, limit=archive_limits().max_entries + 2)
        folder_files = [o for o in listing if o["Key"] != ref.key and not o["Key"].endswith("/")]
        files_digest = hashlib.sha256("\n".join(f"{o['Key']}\t{o.get('ETag', '')}\t{o.get('Size', 0)}"
                                                for o in sorted(folder_files, key=lambda o: o["Key"])).encode()).hexdigest()
        identity = f"{identity}|{files_digest}"
    dataset_id = drop_dataset_id(storage.bucket, ref.key, identity)
    dataset = table.get_dataset(dataset_id)
    if dataset is None:
        now = utcnow()
        fresh = Dataset(id=dataset_id, owner=ref.owner, name=dataset_name(ref.name), status=DatasetStatus.VALIDATING, created_at=now,
                        updated_at=now, archive_key=keys.dataset_archive_key(ref.owner, dataset_id), source_key=ref.key)
        try:
            dataset = table.create_dataset(fresh)
            logger.info("drop dataset created", extra={"dataset_id": dataset_id, "key": ref.key})
        except Conflict:
            dataset = table.get_dataset(dataset_id) or fresh  # a concurrent duplicate created it: carry on alongside
    if dataset.status == DatasetStatus.INVALID or (dataset.status == DatasetStatus.READY and dataset.job_id):
        return IngestOutcome.for_dataset(IngestAction.DUPLICATE, "DUPLICATE_EVENT",
                                         f"this drop was ingested before as dataset {dataset.id}", ref.key, dataset)
    if dataset.status == DatasetStatus.READY and (adopted := _adopt_existing_job(dataset)) is not None:
        return IngestOutcome.for_dataset(IngestAction.DUPLICATE, "DUPLICATE_EVENT",
                                         f"this drop was ingested before as dataset {dataset.id}", ref.key, adopted)

    with tempfile.TemporaryDirectory(prefix="drop-") as scratch:
        local = Path(scratch) / "dataset.zip"
        config, report, sha, archive_size = _prepare_and_validate(storage, ref, folder_files, version_id, size, local)
        if config is not None and rules_for_preset(config.preset).modality == "video":
            dataset = dataset.model_copy(update={"kind": DatasetKind.VIDEO})
        if dataset.status == DatasetStatus.VALIDATING:
            if report.ok:
                if ref.is_folder:
                    storage.upload_file(str(local), dataset.archive_key, content_type="application/zip")
                else:
                    storage.copy(ref.key, dataset.archive_key, source_version_id=version_id)
            dataset, won = save_validation(dataset, report, archive_sha256=sha, archive_size=archive_size)
        else:
            won = False  # ready without a job: a retry after a crash between the two writes
    if dataset.status != DatasetStatus.READY or config is None:
        return validated_outcome(dataset, ref.key, won=won)
    return _queue_job(dataset, config, ref.key, won=won, lambda_context=lambda_context)


# -- archive + config --------------------------------------------------------------------------
def _prepare_and_validate(storage: Storage, ref: keys.DropRef, folder_files: list[dict[str, Any]], version_id: str | None,
                          size: int | None, local: Path) -> tuple[DropConfig | None, ValidationReport, str | None, int | None]:
    config_bytes: bytes | None = None
    config_error: DropConfigError | None = None
    if ref.is_folder:
        try:
            config_bytes = _read_bounded(storage, ref.key, version_id)
        except ClientError as exc:
            if not is_missing_object(exc):
                raise
            return None, ValidationReport.refused("SOURCE_MISSING", f"{keys.DROP_CONFIG_NAME} was deleted before it could be read; "
                                                                    "upload it again"), None, None
        prepared = _build_folder_zip(storage, ref.folder_prefix, folder_files, local)
    else:
        prepared = fetch_object(ref.key, version_id, size, local)
    if isinstance(prepared, ValidationReport):
        return None, prepared, None, size
    sha, archive_size = prepared
    config: DropConfig | None = None
    try:
        with SafeArchive.open(local, archive_limits()) as archive:
            skip: frozenset[str] = frozenset()
            if not ref.is_folder and (entry := find_config_entry(archive.files)) is not None:
                skip = frozenset({entry.path})
                if entry.size > MAX_DROP_CONFIG_BYTES:
                    config_error = DropConfigError(f"{keys.DROP_CONFIG_NAME} is {entry.size} bytes; the limit is {MAX_DROP_CONFIG_BYTES}")
                else:
                    config_bytes = archive.read_small(entry, MAX_DROP_CONFIG_BYTES)
            if config_error is None:
                config, config_error = _load_config(config_bytes)
            rules: ValidationRules = generic_rules() if config is None else rules_for_preset(config.preset)
            report = validate_archive(archive, rules, skip=skip)
    except UnsafeArchive as exc:
        return None, ValidationReport.refused(exc.code, exc.message), sha, archive_size
    if config_error is not None:
        report.errors.insert(0, DatasetError(code=config_error.code, message=config_error.message))
        config = None
    return config, report, sha, archive_size


def _load_config(data: bytes | None) -> tuple[DropConfig | None, DropConfigError | None]:
    """Parse loraforge.yaml and check it the way job creation will (preset, bounds, GPU endpoint, webhook URL)."""
    try:
        config = parse_drop_config(data)
        plan_job(config, dataset=None)
    except DropConfigError as exc:
        return None, exc
    except LoraforgeError as exc:
        return None, DropConfigError(f"{keys.DROP_CONFIG_NAME}: {exc.message}", code=exc.code, details=exc.details)
    return config, None


def _read_bounded(storage: Storage, key: str, version_id: str | None) -> bytes:
    body = storage.open(key, version_id=version_id)
    try:
        return body.read(MAX_DROP_CONFIG_BYTES + 1)
    finally:
        body.close()


def _zip_time(value: Any) -> tuple[int, int, int, int, int, int]:
    ts = value if isinstance(value, datetime) else utcnow()
    return max(ts.year, 1980), ts.month, ts.day, ts.hour, ts.minute, ts.second


def _build_folder_zip(storage: Storage, prefix: str, objects: list[dict[str, Any]], dest: Path) -> tuple[str, int] | ValidationReport:
    """Zip the folder's files object by object, streaming (never a whole file in memory); then hash the zip."""
    limits = archive_limits()
    if len(objects) > limits.max_entries:
        return ValidationReport.refused("TOO_MANY_ENTRIES", f"the folder holds more than {limits.max_entries} files")
    if (refused := too_large(sum(int(o.get("Size", 0)) for o in objects))) is not None:
        return refused
    if not objects:
        return ValidationReport.refused("EMPTY_ARCHIVE", f"the folder holds no files besides {keys.DROP_CONFIG_NAME}; upload the images "
                                                         f"first and {keys.DROP_CONFIG_NAME} last")
    # The listing's sizes were checked above; an object overwritten with a bigger one since is counted as read.
    read = 0
    with zipfile.ZipFile(dest, "w", allowZip64=True) as zf:
        for obj in sorted(objects, key=lambda o: o["Key"]):
            info = zipfile.ZipInfo(obj["Key"][len(prefix):], date_time=_zip_time(obj.get("LastModified")))
            stored = PurePosixPath(info.filename).suffix.lower() in MEDIA_SUFFIXES  # already compressed: store, don't deflate
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.file_size = int(obj.get("Size", 0))
            try:
                body = storage.open(obj["Key"])
            except ClientError as exc:
                if is_missing_object(exc):
                    continue  # deleted since the listing: it is simply not part of the dataset
                raise
            with body, zf.open(info, "w", force_zip64=True) as out:
                while chunk := body.read(DOWNLOAD_CHUNK):
                    read += len(chunk)
                    if (refused := too_large(read)) is not None:
                        return refused
                    out.write(chunk)
    digest = hashlib.sha256()
    with dest.open("rb") as fh:
        while chunk := fh.read(DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), dest.stat().st_size


# -- the job -------------------------------------------------------------------------------------
def _adopt_existing_job(dataset: Dataset) -> Dataset | None:
    """A ready drop dataset without a job id: a previous attempt may have created the job and died before
    recording it. Look among the owner's newest jobs (1 query) and record it instead of creating another."""
    page = JobsTable().list_jobs_by_owner(dataset.owner, limit=RECENT_JOBS_SCANNED)
    job = next((j for j in page.items if j.dataset_id == dataset.id), None)
    return _record_job(dataset, job.id) if job is not None else None


def _record_job(dataset: Dataset, job_id: str) -> Dataset:
    table = JobsTable()
    for _ in range(3):
        if dataset.job_id == job_id:
            return dataset
        try:
            return table.save_dataset(dataset.model_copy(update={"job_id": job_id}), expected_version=dataset.version,
                                      expected_status=DatasetStatus.READY)
        except InvalidTransition:
            dataset = table.get_dataset(dataset.id) or dataset
    return dataset


def _queue_job(dataset: Dataset, config: DropConfig, key: str, *, won: bool, lambda_context: Any) -> IngestOutcome:
    options = config.model_dump(mode="json")
    options["name"] = options.get("name") or dataset.name
    request = CreateJobRequest(dataset_id=dataset.id, **options)
    try:
        job = create_job(dataset.owner, request, source=JobSource.DROP, idempotency_key=dataset.id, lambda_context=lambda_context)
    except Conflict as exc:
        if exc.code != "IDEMPOTENCY_KEY_IN_USE":
            return _job_refused(dataset, key, exc)
        return IngestOutcome.for_dataset(IngestAction.DUPLICATE, "JOB_CREATION_IN_PROGRESS",
                                         "another delivery of this drop is creating its job right now", key, dataset)
    except LoraforgeError as exc:
        return _job_refused(dataset, key, exc)
    dataset = _record_job(dataset, job.id)
    if won:
        metrics.add_metric(name="DropJobsQueued", unit=MetricUnit.Count, value=1)
    outcome = validated_outcome(dataset, key, won=True, extra=f"; job {job.id} queued ({job.preset})")
    if not won:
        outcome = outcome.model_copy(update={"action": IngestAction.DUPLICATE, "reason": "DUPLICATE_EVENT",
                                             "message": f"this drop was ingested before as dataset {dataset.id} (job {job.id})"})
    return outcome


def _job_refused(dataset: Dataset, key: str, exc: LoraforgeError) -> IngestOutcome:
    """The data is fine but the job options were refused at creation: the dataset stays ready (usable through the
    API) and says why no job was queued."""
    logger.warning("drop job refused", extra={"dataset_id": dataset.id, "code": exc.code, "error": exc.message})
    warning = f"JOB_NOT_CREATED: {exc.code}: {exc.message}"
    table = JobsTable()
    if warning not in dataset.warnings:
        try:
            dataset = table.save_dataset(dataset.model_copy(update={"warnings": [*dataset.warnings, warning]}),
                                         expected_version=dataset.version, expected_status=DatasetStatus.READY)
        except InvalidTransition:
            dataset = table.get_dataset(dataset.id) or dataset
    return validated_outcome(dataset, key, won=True, extra=f"; no job was queued ({exc.code}: {exc.message})")
