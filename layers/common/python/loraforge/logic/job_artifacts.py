"""`GET /v1/jobs/{id}/artifacts`: checkpoints, samples, the final LoRA and logs, each with a short-lived presigned GET."""

from __future__ import annotations

from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.artifact import ArtifactKind, ArtifactLink
from ..observability import logger
from ..settings import get_settings


def job_artifacts(owner: str, job_id: str, *, kind: ArtifactKind | None = None) -> list[ArtifactLink]:
    """1 read + 1 query; URLs are signed locally. Only keys under the job's own prefix are ever signed."""
    table = JobsTable()
    table.get_job_for_owner(job_id, owner)
    storage, ttl = Storage(), get_settings().presign_ttl_seconds
    prefix = keys.job_prefix(owner, job_id)
    links = []
    for artifact in table.list_artifacts(job_id, kind=str(kind) if kind else None):
        if not artifact.key.startswith(prefix):
            logger.warning("artifact outside the job prefix not signed", extra={"job_id": job_id, "key": artifact.key})
            continue
        url, expires_at = storage.presigned_get(artifact.key, ttl, filename=artifact.name)
        links.append(ArtifactLink(**artifact.model_dump(), url=url, expires_at=expires_at))
    return links
