"""`POST /v1/datasets`: register a dataset and hand out a presigned POST for its archive.

The dataset starts `awaiting_upload`; the upload of `datasets/<owner>/<id>/dataset.zip` triggers
ingest (S3 → EventBridge), which validates it into `ready` or `invalid`.
"""

from __future__ import annotations

from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import PresignedPost, Storage
from ..models.common import new_id, utcnow
from ..models.dataset import Dataset
from ..models.requests import CreateDatasetRequest
from ..models.status import DatasetStatus
from ..observability import logger


def create_dataset(owner: str, request: CreateDatasetRequest) -> tuple[Dataset, PresignedPost]:
    """1 DynamoDB write; the presigned POST is signed locally (no S3 call). Its policy pins the one key and bounds the size."""
    now = utcnow()
    dataset_id = new_id("ds")
    dataset = Dataset(
        id=dataset_id, owner=owner, name=request.name, kind=request.kind, status=DatasetStatus.AWAITING_UPLOAD,
        created_at=now, updated_at=now, archive_key=keys.dataset_archive_key(owner, dataset_id),
    )
    JobsTable().create_dataset(dataset)
    upload = Storage().dataset_upload_post(owner, dataset_id)
    logger.info("dataset created", extra={"dataset_id": dataset_id, "owner": owner})
    return dataset, upload
