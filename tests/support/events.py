"""Sample events (repo `events/`): what each Lambda function receives in production, one JSON file per case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"


def event_path(name: str) -> Path:
    """`events/<name>.json`; `name` may carry the `.json` suffix."""
    path = EVENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in EVENTS_DIR.glob("*.json")))
        raise FileNotFoundError(f"no sample event {name!r} in {EVENTS_DIR} (available: {available})")
    return path


def load_event(name: str) -> dict[str, Any]:
    """A fresh dict each call, so a test may mutate it without affecting the next one."""
    return json.loads(event_path(name).read_text())


def event_names() -> list[str]:
    return sorted(p.stem for p in EVENTS_DIR.glob("*.json"))
