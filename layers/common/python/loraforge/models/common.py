"""Small shared types: ids, timestamps, owner names."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"
_OWNER_RE = re.compile(OWNER_PATTERN)
ID_PATTERN = r"^(job|ds)_[0-9a-z]{20}$"

Owner = Annotated[str, StringConstraints(pattern=OWNER_PATTERN)]
"""An owner id (the JWT `sub`). Never contains '/', so it is safe as an S3 key segment."""

# 32 lowercase base-32 digits; time-ordered prefix so ids sort roughly by creation.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Timestamps are stored as ISO-8601 UTC with milliseconds so they sort as strings."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 32)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """`job_…` / `ds_…`: 10 chars of milliseconds + 10 random chars (ULID-like, lowercase)."""
    ms = int(utcnow().timestamp() * 1000)
    return f"{prefix}_{_b32(ms, 10)}{_b32(secrets.randbits(50), 10)}"


def stable_id(prefix: str, *parts: str) -> str:
    """An id shaped like `new_id(prefix)` (same alphabet and length, so it passes every id pattern) but derived from
    `parts` by sha256: the same parts always name the same resource (e.g. the job of an Idempotency-Key). Not time-ordered."""
    digest = hashlib.sha256(json.dumps([prefix, *parts]).encode()).digest()
    return f"{prefix}_{_b32(int.from_bytes(digest[:13], 'big'), 20)}"


def is_valid_owner(owner: str) -> bool:
    return bool(_OWNER_RE.match(owner))


def _check_owner(value: str) -> str:
    if not is_valid_owner(value):
        raise ValueError("owner must be 1-128 characters of letters, digits and ._@+- (no '/')")
    return value


CheckedOwner = Annotated[str, AfterValidator(_check_owner)]
