"""Run an engine command as a subprocess in its own process group and stream its signals.

The command runs under `launch.py` (the supervisor: SIGINT at default disposition for the engine,
group kill when the worker dies). Stopping is cooperative first: SIGINT to the whole group (the
engine prints `Job stopped` and exits), then SIGKILL to the group after a grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from .base import EngineRun
from .output_parser import LineSplitter, OutputParser, Signal

LAUNCHER = Path(__file__).resolve().parent.parent / "launch.py"
READ_CHUNK = 64 * 1024


def _live_members_linux(pgid: int) -> bool | None:
    """Whether any non-zombie process is in the group (Linux /proc); None where /proc is unavailable."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state, ppid, pgrp, ...; a zombie (Z) has exited and only waits to be reaped
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def group_alive(pgid: int) -> bool:
    """True while a process of the group is still running (exited zombies waiting for a reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    live = _live_members_linux(pgid)
    return True if live is None else live



# RunPod sets these for the worker's SDK loop: the endpoint API key and the job-take/job-done URLs. The engine
# needs none of them; it runs third-party code (AI-Toolkit and its model loaders) that must not be able to read them.
WORKER_ONLY_PREFIXES = ("RUNPOD_",)


def engine_environment(worker_env: Mapping[str, str], run_env: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: the worker's without its RunPod credentials, plus the run's own variables."""
    env = {name: value for name, value in worker_env.items() if not name.startswith(WORKER_ONLY_PREFIXES)}
    env.update(run_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env

class EngineProcess:
    def __init__(self, run: EngineRun, parser: OutputParser) -> None:
        self.run = run
        self.parser = parser
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_requested = False
        self._queue: asyncio.Queue[Signal | None] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self._closer: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def start(self) -> None:
        env = engine_environment(os.environ, self.run.env)
        env["LORAFORGE_SUPERVISOR_PARENT"] = str(os.getpid())
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(LAUNCHER), *self.run.argv, cwd=str(self.run.cwd), env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [asyncio.create_task(self._read(self.proc.stdout)), asyncio.create_task(self._read(self.proc.stderr))]
        self._closer = asyncio.create_task(self._close_queue_when_done())

    async def _read(self, stream: asyncio.StreamReader) -> None:
        splitter = LineSplitter()
        while chunk := await stream.read(READ_CHUNK):
            for line in splitter.feed(chunk):
                self._put(line)
        for line in splitter.flush():
            self._put(line)

    def _put(self, line: str) -> None:
        for sig in self.parser.interpret(line):
            self._queue.put_nowait(sig)

    async def _close_queue_when_done(self) -> None:
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._queue.put_nowait(None)

    async def signals(self) -> AsyncIterator[Signal]:
        """Every signal until both streams close (the engine exited)."""
        while (sig := await self._queue.get()) is not None:
            yield sig

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    def _signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    async def stop(self, grace_seconds: float) -> None:
        """SIGINT the group, wait up to `grace_seconds`, then SIGKILL whatever is left of it."""
        if self.proc is None:
            return
        self.stop_requested = True
        if self.proc.returncode is None:
            self._signal_group(signal.SIGINT)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace_seconds)
            except TimeoutError:
                pass
        self._signal_group(signal.SIGKILL)  # stragglers (data-loader workers) and a stuck engine
        await self.proc.wait()
        for _ in range(50):  # SIGKILL is asynchronous: wait (bounded) until the kernel has taken them down
            if not group_alive(self.proc.pid):
                break
            await asyncio.sleep(0.1)

    def kill_now(self) -> None:
        """Synchronous last resort (used when the event loop is going away)."""
        self._signal_group(signal.SIGKILL)
