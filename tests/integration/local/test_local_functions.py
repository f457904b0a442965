"""The template's functions run in-process like warm Lambda environments: one invocation at a time per function."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraforge.local.aws_resources import StackResources
from loraforge.local.lambda_runtime import FunctionSpec, LocalFunction, LocalFunctions
from loraforge.settings import reset_settings
from tests.support.apigw import OWNER_A, api_event

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def probe_module(tmp_path: Path) -> Iterator[Path]:
    """A handler module that records how many invocations overlap."""
    (tmp_path / "overlap_probe.py").write_text(
        "import threading, time\n"
        "lock = threading.Lock()\n"
        "running = 0\n"
        "most = 0\n"
        "def handler(event, context):\n"
        "    global running, most\n"
        "    with lock:\n"
        "        running += 1\n"
        "        most = max(most, running)\n"
        "    time.sleep(0.01)\n"
        "    with lock:\n"
        "        running -= 1\n"
        "    return {'echo': event['n']}\n"
    )
    yield tmp_path


def test_a_function_runs_one_invocation_at_a_time(probe_module: Path) -> None:
    # Given a function whose handler notes overlapping invocations
    spec = FunctionSpec(logical_id="Probe", module="overlap_probe", attribute="handler", timeout=3, memory=128, events={})
    function = LocalFunction(spec, probe_module)

    # When eight threads invoke it at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: function.invoke({"n": n}), range(24)))

    # Then each caller got its own answer and no two invocations overlapped
    assert [r["echo"] for r in results] == list(range(24))
    import overlap_probe  # type: ignore[import-not-found]  # written by the fixture

    assert overlap_probe.most == 1
    assert function.invocations == 24


def test_concurrent_requests_to_the_real_api_each_get_their_routes_status_code(
    aws_stack: StackResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the template's API function, as the threaded local API server calls it
    monkeypatch.setenv("RUNPOD_ENDPOINTS", json.dumps({"cpu": "ep-cpu-test"}))
    reset_settings()
    api = LocalFunctions(REPO_ROOT / "template.yaml")["ApiFunction"]
    create = api_event("POST", "/v1/datasets", owner=OWNER_A, body={"name": "concurrent", "kind": "images"})
    listing = api_event("GET", "/v1/datasets", owner=OWNER_A)
    start = threading.Barrier(8)

    def call(n: int) -> int:
        if n < 8:
            start.wait()
        return int(api.invoke(create if n % 2 == 0 else listing)["statusCode"])

    # When creates (201) and lists (200) arrive at the same moment
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(32)))

    # Then every create answered 201 and every list 200: no request borrowed another's route
    assert statuses == [201 if n % 2 == 0 else 200 for n in range(32)]
