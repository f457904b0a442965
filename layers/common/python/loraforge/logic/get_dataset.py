"""`GET /v1/datasets/{id}` and `GET /v1/datasets`: the owner's datasets only (another owner's is a 404)."""

from __future__ import annotations

from ..dal.jobs_table import JobsTable, Page
from ..dal.storage import Storage
from ..models.dataset import Dataset


def get_dataset(owner: str, dataset_id: str) -> tuple[Dataset, tuple[str, str] | None]:
    """The dataset and, once validated, a presigned GET (url, expires_at) of its full manifest (every accepted and rejected item)."""
    dataset = JobsTable().get_dataset_for_owner(dataset_id, owner)
    manifest = Storage().presigned_get(dataset.manifest_key, filename="manifest.json") if dataset.manifest_key else None
    return dataset, manifest


def list_datasets(owner: str, *, limit: int, cursor: str | None) -> Page:
    """Newest first, one Query per page."""
    return JobsTable().list_datasets_by_owner(owner, limit=limit, cursor=cursor)
