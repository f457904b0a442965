"""End-to-end harness: `loraforge local up` in a child process, used as a black box over HTTP, S3 and the CLI.

`local_stack` (module scope) starts one stack per test module and stops it with SIGINT at the end,
as a person would with Ctrl-C. Tests talk to it only through what a user has: the API URL and
tokens from `.loraforge/local.json`, the S3 endpoint, the RunPod emulator's URL, and the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

STARTUP_TIMEOUT = 180.0
# The installed console script (pyproject [project.scripts]), as a user runs it.
_SCRIPT = Path(sys.executable).with_name("loraforge")
LORAFORGE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "loraforge.cli.main"]
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class StackHandle:
    process: subprocess.Popen[bytes]
    workdir: Path
    state_dir: Path
    info: dict[str, Any]
    env: dict[str, str]
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    # -- access as a user has it ----------------------------------------------------------------------
    def api(self, user: str = "alice") -> httpx.Client:
        if user not in self._clients:
            self._clients[user] = httpx.Client(base_url=self.info["api_url"], headers={"Authorization": f"Bearer {self.info['tokens'][user]}"},
                                               timeout=30)
        return self._clients[user]

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.info["aws_endpoint_url"], region_name="us-east-1", aws_access_key_id="local",
                            aws_secret_access_key="local", config=Config(s3={"addressing_style": "path"}))

    def aws(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.info["aws_endpoint_url"], region_name="us-east-1", aws_access_key_id="local",
                            aws_secret_access_key="local")

    @property
    def runpod_root(self) -> str:
        return self.info["runpod_url"].removesuffix("/v2")

    def cli_command(self, *args: str, user: str = "alice") -> list[str]:
        return [*LORAFORGE, *args, "--state-dir", str(self.state_dir), "--user", user]

    def cli(self, *args: str, user: str = "alice", timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.cli_command(*args, user=user), cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"loraforge {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def job(self, job_id: str, user: str = "alice") -> dict[str, Any]:
        response = self.api(user).get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_job(self, job_id: str, predicate: Any = None, *, timeout: float = 180, user: str = "alice") -> dict[str, Any]:
        """Polls until `predicate(job)` (default: a terminal status)."""
        check = predicate or (lambda job: job["status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id, user)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {json.dumps(job)[:2000]}\n{self.log_tail()}")
            time.sleep(0.3)

    def events(self, job_id: str, user: str = "alice") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = None
        while True:
            response = self.api(user).get(f"/v1/jobs/{job_id}/events", params={"after": after} if after is not None else None)
            response.raise_for_status()
            page = response.json()["items"]
            if not page:
                return items
            items.extend(page)
            after = page[-1]["seq"]

    def log_tail(self, lines: int = 60) -> str:
        log = self.state_dir / "logs" / "stack.log"
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        return "stack log tail:\n" + "\n".join(text)

    # -- processes ---------------------------------------------------------------------------------------
    def descendants(self) -> list[Any]:
        psutil = pytest.importorskip("psutil")
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_stack(workdir: Path, *, workers: int = 1, env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> StackHandle:
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / ".loraforge"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LORAFORGE_", "PYTEST_"))}
    child_env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    command = [*LORAFORGE, "local", "up", "--state-dir", str(state_dir), "--workers", str(workers),
               "--poll-interval", "0.1", "--reconcile-every", "2", *extra_args]
    output = (workdir / "local-up.out").open("wb")
    process = subprocess.Popen(command, cwd=workdir, env=child_env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    state_file = state_dir / "local.json"
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"`loraforge local up` did not start:\n{(workdir / 'local-up.out').read_text(errors='replace')}")
        time.sleep(0.2)
    info = json.loads(state_file.read_text())
    return StackHandle(process=process, workdir=workdir, state_dir=state_dir, info=info, env=child_env)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    # A killed worker must leave the job failed (not auto-retried) so the tests can retry it by hand.
    handle = start_stack(tmp_path_factory.mktemp("stack"), workers=1, env={"MAX_AUTO_RETRIES": "0"})
    try:
        yield handle
    finally:
        handle.stop()
