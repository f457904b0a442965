"""`loraforge local up` as a process: its state file, loopback-only sockets, the authorizer, and a clean Ctrl-C.

The last test stops the stack; keep it last in this file.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from loraforge.local.demo_dataset import DEMO_IMAGES, build_demo_dataset

from .conftest import StackHandle, start_stack

pytestmark = pytest.mark.slow
psutil = pytest.importorskip("psutil")

DESIGN_KEYS = {"api_url", "tokens", "aws_endpoint_url", "bucket", "table", "topic_arn", "runpod_url"}
LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    handle = start_stack(tmp_path_factory.mktemp("lifecycle"), workers=2)
    try:
        yield handle
    finally:
        handle.stop()


def listening_sockets(processes: list[object]) -> list[tuple[int, str, int]]:
    found = []
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")  # type: ignore[attr-defined]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN:
                found.append((process.pid, connection.laddr.ip, connection.laddr.port))  # type: ignore[attr-defined]
    return found


def test_state_file_is_the_design_shape_and_is_what_was_printed(stack: StackHandle) -> None:
    # Given a running `loraforge local up`
    printed = (stack.workdir / "local-up.out").read_text()
    document = json.loads(printed[: printed.index("\n}") + 2])

    # Then local.json has exactly DESIGN §10's keys, tokens for at least two users, loopback URLs, and the same content was printed
    assert set(stack.info) == DESIGN_KEYS
    assert len(stack.info["tokens"]) >= 2
    for key in ("api_url", "aws_endpoint_url", "runpod_url"):
        assert urlsplit(stack.info[key]).hostname == "127.0.0.1", key
    assert document == stack.info
    assert (stack.state_dir / "local.json").stat().st_mode & 0o077 == 0, "the bearer tokens are readable by the owner only"


def test_nothing_listens_on_a_non_loopback_address(stack: StackHandle) -> None:
    # Given the stack process and every worker (and engine) process it started
    processes = [psutil.Process(stack.process.pid), *stack.descendants()]

    # When their listening sockets are listed
    sockets = listening_sockets(processes)

    # Then the API, S3/DynamoDB (moto) and the RunPod emulator are all there, and every socket is on loopback
    ports = {port for _, _, port in sockets}
    for key in ("api_url", "aws_endpoint_url", "runpod_url"):
        assert urlsplit(stack.info[key]).port in ports, key
    assert sockets and all(ip in LOOPBACK for _, ip, _ in sockets), sockets


def test_requests_without_a_valid_token_are_refused(stack: StackHandle) -> None:
    api = stack.info["api_url"]
    assert httpx.get(f"{api}/v1/jobs", timeout=10).status_code == 401
    assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": "Bearer forged.token.value"}, timeout=10).status_code == 401
    assert httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {stack.info['tokens']['bob']}"}, timeout=10).status_code == 200


def test_ctrl_c_stops_everything_and_leaves_no_worker_behind(stack: StackHandle, tmp_path: Path) -> None:
    # Given the stack with its two workers, one of them in the middle of training (its engine subprocess running)
    folder = build_demo_dataset(tmp_path / "set", images=DEMO_IMAGES[:4], with_config=False)
    dataset = json.loads(stack.cli("datasets", "upload", str(folder), "--json", check=True).stdout)
    created = stack.api().post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": "tiny-sd", "hyperparameters": {"steps": 1000}})
    assert created.status_code == 201, created.text
    stack.wait_job(created.json()["id"], lambda job: job["status"] == "running" and job["progress"]["step"] >= 1, timeout=180)
    workers = [p for p in stack.descendants() if "handler.py" in " ".join(p.cmdline())]
    assert len(workers) == 2
    everything = stack.descendants()
    assert len(everything) > len(workers), "the training engine runs as a child of its worker"

    # When Ctrl-C (SIGINT) reaches it
    started = time.monotonic()
    code = stack.stop(signal.SIGINT)
    stopped_in = time.monotonic() - started

    # Then it exits 0, no process it started is left, its ports are closed and the state file is gone
    assert code == 0, (stack.workdir / "local-up.out").read_text()[-2000:]
    leftovers = [p.pid for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == []
    for key in ("api_url", "aws_endpoint_url", "runpod_url"):
        url = urlsplit(stack.info[key])
        with pytest.raises(OSError), socket.create_connection((url.hostname, url.port), timeout=2):
            pass
    assert not (stack.state_dir / "local.json").exists()
    print(f"local up stopped in {stopped_in:.1f} s")
