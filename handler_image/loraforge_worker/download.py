"""Streamed, size-bounded, checksummed downloads from presigned GET URLs (dataset.zip, resume checkpoints).

Blocking (httpx sync): the pipeline runs it in a thread so the event loop stays free for the
RunPod stop signal. Never holds a whole file in memory.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CHUNK = 1024 * 1024
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class DownloadError(Exception):
    """`reason`: http (status set) | too_large | size_mismatch | checksum | network."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


def _describe_status(status: int) -> str:
    if status == 403:
        return "403 Forbidden: the presigned URL expired or was not signed for this object"
    if status == 404:
        return "404 Not Found: the object no longer exists"
    return f"HTTP {status}"


def download(url: str, dest: Path, *, max_bytes: int, expected_sha256: str | None = None, expected_size: int | None = None,
             attempts: int = 3, backoff_seconds: float = 1.0, client: httpx.Client | None = None) -> Downloaded:
    """Stream `url` into `dest`. Retries 429/5xx and transport errors; raises DownloadError otherwise."""
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError("too_large", f"the file is {expected_size} bytes; the limit is {max_bytes}")
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    try:
        last: DownloadError | None = None
        for attempt in range(attempts):
            try:
                return _attempt(http, url, dest, max_bytes, expected_sha256, expected_size)
            except DownloadError as exc:
                retryable = exc.reason == "network" or (exc.reason == "http" and exc.status in RETRY_STATUS)
                if not retryable:
                    raise
                last = exc
            if attempt < attempts - 1:
                time.sleep(backoff_seconds * 2**attempt)
        assert last is not None
        raise last
    finally:
        if own:
            http.close()


def _attempt(http: httpx.Client, url: str, dest: Path, max_bytes: int, expected_sha256: str | None,
             expected_size: int | None) -> Downloaded:
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with http.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise DownloadError("http", _describe_status(resp.status_code), resp.status_code)
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError("too_large", f"the file is {declared} bytes; the limit is {max_bytes}")
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError("too_large", f"the file is larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.TransportError as exc:
        raise DownloadError("network", f"{type(exc).__name__}: {exc}") from exc
    except DownloadError:
        dest.unlink(missing_ok=True)
        raise
    if expected_size is not None and size != expected_size:
        dest.unlink(missing_ok=True)
        raise DownloadError("size_mismatch", f"got {size} bytes, expected {expected_size}")
    sha = digest.hexdigest()
    if expected_sha256 is not None and sha != expected_sha256.lower():
        dest.unlink(missing_ok=True)
        raise DownloadError("checksum", f"sha256 {sha} does not match the expected {expected_sha256}")
    return Downloaded(path=dest, size=size, sha256=sha)
