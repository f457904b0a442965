"""Uploads through the job's one presigned POST policy (DESIGN §5: it can only write its own prefix).

A presigned POST stores an object only when the whole request body arrived, so a worker killed
mid-upload leaves nothing half-written in S3. The pipeline only hands over complete files
(a checkpoint after the engine says it is saved, a sample once it was moved into `samples/`).
Uploads run in a small thread pool, concurrently with training.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from loraforge.contract import OutputTarget
from loraforge.models.artifact import Artifact, ArtifactKind
from loraforge.models.common import utcnow

FOLDERS = {
    ArtifactKind.CHECKPOINT: "checkpoints", ArtifactKind.OPTIMIZER: "checkpoints", ArtifactKind.SAMPLE: "samples",
    ArtifactKind.FINAL: "final", ArtifactKind.CONFIG: "logs", ArtifactKind.LOG: "logs", ArtifactKind.METRICS: "logs",
}
TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=30.0)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK = 1024 * 1024


class UploadError(Exception):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise UploadError(f"artifact name must be a plain file name: {name!r}")
    return name


class Uploader:
    def __init__(self, target: OutputTarget, *, max_workers: int = 2, attempts: int = 3, backoff_seconds: float = 1.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.target = target
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self._client = httpx.Client(timeout=TIMEOUT, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="upload")

    def key_for(self, kind: ArtifactKind, name: str) -> str:
        key = f"{self.target.prefix}{FOLDERS[kind]}/{_plain_name(name)}"
        if not key.startswith(self.target.prefix):
            raise UploadError(f"key {key!r} is outside the job prefix")
        return key

    async def upload(self, path: Path, kind: ArtifactKind, step: int, name: str | None = None) -> Artifact:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.upload_sync, path, kind, step, name)

    def upload_sync(self, path: Path, kind: ArtifactKind, step: int, name: str | None = None) -> Artifact:
        name = name or path.name
        key = self.key_for(kind, name)
        size = path.stat().st_size
        if size == 0:
            raise UploadError(f"{name}: refusing to upload an empty file")
        if size > self.target.max_bytes:
            raise UploadError(f"{name} is {size} bytes; the output policy allows at most {self.target.max_bytes}")
        sha = sha256_file(path)
        fields = dict(self.target.fields)
        fields["key"] = key
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        last = "no attempt"
        for attempt in range(self.attempts):
            try:
                with path.open("rb") as fh:
                    resp = self._client.post(self.target.url, data=fields, files={"file": (name, fh, content_type)})
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code in (200, 201, 204):
                    return Artifact(kind=kind, step=step, key=key, size=size, sha256=sha, name=name, created_at=utcnow())
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code not in RETRY_STATUS:
                    break
            if attempt < self.attempts - 1:
                time.sleep(self.backoff_seconds * 2**attempt)
        raise UploadError(f"upload of {name} failed ({last})")

    def close(self) -> None:
        # Uploads still running finish in their threads (a presigned POST is all-or-nothing).
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
