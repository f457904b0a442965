"""`jobs watch`: a live progress bar over `GET /v1/jobs/{id}` and its events, then the artifact list.

On a terminal the bar redraws in place; on a pipe (CI logs) it prints a line whenever the status
changes or progress moves by a tenth, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .common import ApiClient, CliError, table

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
# Events worth a line above the bar (progress and log lines are the bar itself / too chatty).
_SHOWN_EVENTS = {"created", "dispatched", "dispatch_failed", "started", "checkpoint", "sample", "status", "cancel_requested",
                 "retry_scheduled", "completed", "failed", "cancelled"}


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_bytes(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def render_bar(job: dict[str, Any], *, width: int = 30, unicode: bool = True) -> str:
    """One line: status, bar, step/total, percent, loss, ETA."""
    progress = job.get("progress") or {}
    step = int(progress.get("step") or 0)
    total = int(progress.get("total_steps") or (job.get("hyperparameters") or {}).get("steps") or 0)
    fraction = min(1.0, step / total) if total else 0.0
    if job.get("status") == "succeeded":
        fraction = 1.0
    filled = int(round(fraction * width))
    full, empty = ("█", "░") if unicode else ("#", "-")
    parts = [f"{job.get('status', '?'):<10}", f"[{full * filled}{empty * (width - filled)}]", f"{step}/{total or '?'}", f"{fraction * 100:3.0f}%"]
    loss = progress.get("loss")
    parts.append(f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss -")
    if job.get("status") not in TERMINAL_STATUSES:
        parts.append(f"ETA {format_duration(progress.get('eta_seconds'))}")
    return "  ".join(parts)


def describe_event(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind not in _SHOWN_EVENTS:
        return None
    data = event.get("data") or {}
    details = []
    for key in ("status", "step", "attempt", "runpod_id", "code", "message", "name"):
        if data.get(key) not in (None, ""):
            details.append(f"{key}={data[key]}")
    at = str(event.get("at") or "")[11:19]
    return f"  {at} {kind}" + (f"  {' '.join(details)}" if details else "")


class Watcher:
    def __init__(self, api: ApiClient, job_id: str, *, out: TextIO | None = None, interval: float = 0.5,
                 show_events: bool = True, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.api = api
        self.job_id = job_id
        self.out = out or sys.stdout
        self.interval = interval
        self.show_events = show_events
        self.clock = clock
        self.sleep = sleep
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        encoding = (getattr(self.out, "encoding", None) or "").lower()
        self.unicode = "utf" in encoding
        self._after: int | None = None
        self._bar_shown = False
        self._last_logged: tuple[str, int] | None = None

    def run(self, timeout: float | None = None) -> dict[str, Any]:
        """Follows the job to a terminal status and returns it."""
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            job = self.api.get(f"/v1/jobs/{self.job_id}")
            if self.show_events:
                self._print_new_events()
            self._draw(job)
            if job.get("status") in TERMINAL_STATUSES:
                self._finish_line()
                return job
            if deadline is not None and self.clock() > deadline:
                self._finish_line()
                raise CliError(f"gave up watching {self.job_id} after {timeout:.0f} s (status {job.get('status')})")
            self.sleep(self.interval)

    def _print_new_events(self) -> None:
        params: dict[str, Any] = {"after": self._after} if self._after is not None else {}
        page = self.api.get(f"/v1/jobs/{self.job_id}/events", **params)
        items = page.get("items", []) if isinstance(page, dict) else list(page or [])
        for event in items:
            seq = event.get("seq")
            if isinstance(seq, int):
                self._after = max(self._after or 0, seq)
            line = describe_event(event)
            if line:
                self._write_line(line)

    def _write_line(self, line: str) -> None:
        if self.tty and self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False
        self.out.write(line + "\n")
        self.out.flush()

    def _draw(self, job: dict[str, Any]) -> None:
        bar = render_bar(job, unicode=self.unicode)
        if self.tty:
            self.out.write("\r\x1b[K" + bar)
            self._bar_shown = True
            self.out.flush()
            return
        progress = job.get("progress") or {}
        total = int(progress.get("total_steps") or 0)
        step = int(progress.get("step") or 0)
        decile = int(step * 10 / total) if total else 0
        marker = (str(job.get("status")), decile)
        if marker != self._last_logged:
            self._last_logged = marker
            self.out.write(bar + "\n")
            self.out.flush()

    def _finish_line(self) -> None:
        if self.tty and self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False


def artifact_rows(artifacts: list[dict[str, Any]]) -> str:
    rows = [[a.get("kind"), a.get("step"), format_bytes(a.get("size")), a.get("key")] for a in artifacts]
    return table(rows, ["KIND", "STEP", "SIZE", "KEY"])


def list_artifacts(api: ApiClient, job_id: str) -> list[dict[str, Any]]:
    page = api.get(f"/v1/jobs/{job_id}/artifacts")
    return page.get("items", []) if isinstance(page, dict) else list(page or [])


def job_summary_lines(job: dict[str, Any]) -> list[str]:
    lines = [f"job {job.get('id')}: {job.get('status')}"]
    progress = job.get("progress") or {}
    if progress.get("total_steps"):
        lines.append(f"  steps      {progress.get('step')}/{progress.get('total_steps')}")
    if isinstance(progress.get("loss"), int | float):
        lines.append(f"  loss       {progress['loss']:.4f}")
    lines.extend(cost_lines(job))
    error = job.get("error")
    if error:
        lines.append(f"  error      {error.get('code')}: {error.get('message')} ({error.get('kind')})")
    return lines


def cost_lines(job: dict[str, Any]) -> list[str]:
    """What the job cost, saying how sure the figure is: RunPod's bill, or the estimate plus the run time measured so far."""
    cost, lines = job.get("cost") or {}, []
    if cost.get("actual_usd") is not None:
        billed = cost.get("billed_seconds")
        lines.append(f"  cost       ${cost['actual_usd']:.4f} billed by RunPod" + (f" for {format_duration(billed)} of GPU time" if billed else ""))
    elif cost.get("estimated_usd") is not None:
        lines.append(f"  estimate   ${cost['estimated_usd']:.4f} (not billed by RunPod yet)")
    if job.get("run_seconds"):
        attempts = job.get("attempts") or 1
        lines.append(f"  run time   {format_duration(job['run_seconds'])} measured" + (f" over {attempts} attempts" if attempts > 1 else ""))
    return lines
