"""Read a .safetensors header without torch: the worker verifies files before it uploads them.

Layout: 8-byte little-endian header length N, N bytes of JSON (`{"__metadata__": {str: str},
"<tensor>": {"dtype", "shape", "data_offsets": [begin, end]}, ...}`), then the tensor bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024


class NotSafetensors(ValueError):
    pass


def read_header(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise NotSafetensors(f"{path}: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw_len)
        if length <= 0 or length > MAX_HEADER_BYTES:
            raise NotSafetensors(f"{path}: header length {length} out of range")
        blob = fh.read(length)
    if len(blob) != length:
        raise NotSafetensors(f"{path}: truncated header")
    try:
        header = json.loads(blob)
    except ValueError as exc:
        raise NotSafetensors(f"{path}: header is not JSON") from exc
    if not isinstance(header, dict):
        raise NotSafetensors(f"{path}: header is not an object")
    return header


def read_metadata(path: str | Path) -> dict[str, str]:
    meta = read_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def training_step(path: str | Path) -> int | None:
    """`training_info.step` (AI-Toolkit writes it as a JSON string; our diffusers engine does too)."""
    raw = read_metadata(path).get("training_info")
    if raw is None:
        return None
    try:
        info = json.loads(raw)
        return int(info["step"])
    except (ValueError, KeyError, TypeError):
        return None


def is_complete(path: str | Path) -> bool:
    """True when the file holds exactly the bytes its header promises (no truncated tail)."""
    try:
        header = read_header(path)
    except (NotSafetensors, OSError):
        return False
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return False
    return Path(path).stat().st_size == 8 + length + data_end
