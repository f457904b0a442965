"""The S3 key layout (DESIGN §5) and the ONE place S3 event keys are URL-decoded.

incoming/<owner>/…                                  drop zone (zip, or a folder + loraforge.yaml last)
datasets/<owner>/<dataset>/dataset.zip|manifest.json
jobs/<owner>/<job>/{checkpoints,samples,final,logs}/…
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus

from ..models.common import is_valid_owner

INCOMING = "incoming/"
DATASETS = "datasets/"
JOBS = "jobs/"
DROP_CONFIG_NAME = "loraforge.yaml"

JOB_FOLDERS = {"checkpoint": "checkpoints", "optimizer": "checkpoints", "sample": "samples", "final": "final",
               "config": "logs", "log": "logs", "metrics": "logs"}


def decode_event_key(raw_key: str) -> str:
    """Keys in S3 notifications are form-encoded ('/' may be %2F, ' ' is '+'): decode exactly here."""
    return unquote_plus(raw_key)


def dataset_prefix(owner: str, dataset_id: str) -> str:
    return f"{DATASETS}{owner}/{dataset_id}/"


def dataset_archive_key(owner: str, dataset_id: str) -> str:
    return dataset_prefix(owner, dataset_id) + "dataset.zip"


def dataset_manifest_key(owner: str, dataset_id: str) -> str:
    return dataset_prefix(owner, dataset_id) + "manifest.json"


def job_prefix(owner: str, job_id: str) -> str:
    return f"{JOBS}{owner}/{job_id}/"


def job_artifact_key(owner: str, job_id: str, kind: str, name: str) -> str:
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"artifact name must be a plain file name: {name!r}")
    return f"{job_prefix(owner, job_id)}{JOB_FOLDERS[kind]}/{name}"


@dataclass(frozen=True)
class DatasetArchiveRef:
    owner: str
    dataset_id: str


@dataclass(frozen=True)
class DropRef:
    """A drop-to-train upload: a zip `incoming/<owner>/<name>.zip` or a folder trigger `…/<name>/loraforge.yaml`."""

    owner: str
    name: str
    key: str
    is_folder: bool

    @property
    def folder_prefix(self) -> str:
        return f"{INCOMING}{self.owner}/{self.name}/"


def parse_dataset_archive_key(key: str) -> DatasetArchiveRef | None:
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "datasets" and parts[3] == "dataset.zip" and is_valid_owner(parts[1]) and parts[2]:
        return DatasetArchiveRef(owner=parts[1], dataset_id=parts[2])
    return None


def parse_drop_key(key: str) -> DropRef | None:
    """Only two shapes trigger work; every other key under incoming/ (the folder's images) is ignored."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "incoming" or not is_valid_owner(parts[1]):
        return None
    if len(parts) == 3 and parts[2].lower().endswith(".zip") and len(parts[2]) > 4:
        return DropRef(owner=parts[1], name=parts[2][:-4], key=key, is_folder=False)
    if len(parts) == 4 and parts[3] == DROP_CONFIG_NAME and parts[2]:
        return DropRef(owner=parts[1], name=parts[2], key=key, is_folder=True)
    return None
