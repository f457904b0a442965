"""Settings of the worker process, read from its environment once per job (no secrets here)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class WorkerRuntime:
    work_root: Path = field(default_factory=lambda: Path(os.environ.get("LORAFORGE_WORK_DIR") or Path(tempfile.gettempdir()) / "loraforge-jobs"))
    worker_id: str = field(default_factory=lambda: os.environ.get("RUNPOD_POD_ID") or socket.gethostname())
    stop_grace_seconds: float = field(default_factory=lambda: _float_env("LORAFORGE_STOP_GRACE_SECONDS", 5.0))
    """SIGINT → SIGKILL grace for the engine group (cancel, time limit)."""
    cancel_upload_wait_seconds: float = field(default_factory=lambda: _float_env("LORAFORGE_CANCEL_UPLOAD_WAIT_SECONDS", 30.0))
    """On cancel, how long uploads already running may finish (the last complete checkpoint reaches S3)."""
    event_flush_seconds: float = field(default_factory=lambda: _float_env("LORAFORGE_EVENT_FLUSH_SECONDS", 10.0))
    sample_poll_seconds: float = field(default_factory=lambda: _float_env("LORAFORGE_SAMPLE_POLL_SECONDS", 1.0))
    keep_workspace: bool = field(default_factory=lambda: os.environ.get("LORAFORGE_KEEP_WORKSPACE") == "1")
    mirror_factory: Callable[[dict[str, Any]], Callable[[dict[str, Any]], None] | None] | None = None
    """Given the RunPod job dict, returns the progress mirror (runpod's `progress_update`) or None."""

    def time_limit_reserve(self, limit_seconds: float) -> float:
        """Stop the engine this long before the time limit, to stop cleanly and upload what is done."""
        return min(30.0, 0.05 * limit_seconds)
