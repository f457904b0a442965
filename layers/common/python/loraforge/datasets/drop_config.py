"""`loraforge.yaml`: the job options of a drop-to-train upload, parsed safely and validated with the API's model.

Bounded (64 KiB), `yaml.safe_load` semantics without anchors/aliases (no alias bombs), a mapping at the top,
then `DropConfig` (the API's `JobOptions` with `preset` defaulting to `tiny-sd`). Every problem is a
`DropConfigError` with code INVALID_DROP_CONFIG and a message naming the field or the line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError

from ..dal.keys import DROP_CONFIG_NAME
from ..models.requests import DropConfig
from .archive import ArchiveEntry

MAX_DROP_CONFIG_BYTES = 64 * 1024
MAX_ERRORS_SHOWN = 5


class DropConfigError(ValueError):
    def __init__(self, message: str, *, code: str = "INVALID_DROP_CONFIG", details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


MAX_NESTING = 32


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses `*alias` references (a 64 KiB file cannot expand into a billion nodes) and nesting deeper
    than MAX_NESTING (the composer recurses once per level: 64 KiB of `[` would be a RecursionError, not a YAMLError)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (*name) are not allowed", event.start_mark)
        if self._depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(None, None, f"values are nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_drop_config(data: bytes | None) -> DropConfig:
    """Bytes of loraforge.yaml (None: no file) → DropConfig. Raises DropConfigError."""
    if data is None:
        return DropConfig()
    if len(data) > MAX_DROP_CONFIG_BYTES:
        raise DropConfigError(f"{DROP_CONFIG_NAME} is {len(data)} bytes; the limit is {MAX_DROP_CONFIG_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DropConfigError(f"{DROP_CONFIG_NAME} is not UTF-8 text") from exc
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DropConfigError(f"{DROP_CONFIG_NAME} is not valid YAML{where}: {problem}") from exc
    if raw is None:
        return DropConfig()
    if not isinstance(raw, dict):
        raise DropConfigError(f"{DROP_CONFIG_NAME} must be a mapping of keys (preset:, trigger_word:, …), not a {type(raw).__name__}")
    try:
        return DropConfig.model_validate(raw)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in problems[:MAX_ERRORS_SHOWN])
        more = f" (and {len(problems) - MAX_ERRORS_SHOWN} more)" if len(problems) > MAX_ERRORS_SHOWN else ""
        raise DropConfigError(f"{DROP_CONFIG_NAME} has invalid settings: {shown}{more}", details=problems) from exc


def find_config_entry(files: list[ArchiveEntry]) -> ArchiveEntry | None:
    """`loraforge.yaml` at the top of the zip, or inside its single top-level folder (zipping a folder)."""
    for entry in files:
        if entry.path == DROP_CONFIG_NAME:
            return entry
    tops = {e.path.split("/", 1)[0] for e in files}
    if len(tops) == 1:
        nested = f"{next(iter(tops))}/{DROP_CONFIG_NAME}"
        for entry in files:
            if entry.path == nested:
                return entry
    return None


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 ._-]+")


def dataset_name(raw: str) -> str:
    """A drop's zip or folder name as a dataset name: `[A-Za-z0-9][A-Za-z0-9 ._-]*`, at most 100 characters."""
    name = _UNSAFE_NAME.sub("-", raw).strip(" .-_")
    name = re.sub(r"-{2,}", "-", name)[:100].rstrip(" .-_")
    return name or "dataset"
