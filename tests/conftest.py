"""Fixtures shared by every test tier (unit, integration, e2e, template, perf).

Environment, set when this module is imported (before any boto3 client or powertools utility exists):
dummy AWS credentials (no test can reach a real account), AWS_DEFAULT_REGION=us-east-1,
POWERTOOLS_TRACE_DISABLED=true, POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE=loraforge,
HF_HUB_OFFLINE=1 (no model download), OMP_NUM_THREADS=1.

Fixtures
  moto_server (session) -> str
      A `ThreadedMotoServer` on 127.0.0.1 (random port), in this process, so tests may also read moto's
      backends directly. Sets AWS_ENDPOINT_URL for the rest of the session: every boto3 client goes to it.
      Its DynamoDB requests are serialized, as the real service serializes conflicting writes.
      (A test using in-process `moto.mock_aws` after it has started must `monkeypatch.delenv("AWS_ENDPOINT_URL")`.)
  aws_stack(moto_server, monkeypatch) -> loraforge.local.aws_resources.StackResources
      Resets moto, creates template.yaml's data resources (bucket, table with GSIs/stream/TTL, topic, queues,
      signing and RunPod secrets), sets the Lambda environment (`StackResources.env()`: TABLE_NAME,
      BUCKET_NAME, TOPIC_ARN, SIGNING_SECRET_ARN, RUNPOD_API_KEY_SECRET_ARN, WEBHOOK_QUEUE_URL, ...), and
      drops every cache that could hold the previous test's names: loraforge settings and clients, and
      powertools parameter providers.
  dynamodb_calls -> tests.support.ddb_guard.DynamoDBCalls
      Counter of DynamoDB operations since the test started (`dynamodb_calls["Query"]`); resources created by
      `aws_stack` are not counted. `with dynamodb_calls.expect_scan(): ...` for a deliberate Scan.
  lambda_context -> FakeLambdaContext
      function_name, function_version, memory_limit_in_mb, invoked_function_arn, aws_request_id (fresh per
      test), log group/stream, get_remaining_time_in_millis() counting down from a 30 s timeout.

No-Scan guard (tests/support/ddb_guard.py): every DynamoDB Scan made through botocore raises `ScanForbidden`,
and any Scan seen outside `expect_scan()` fails the whole run at session end, even if the code swallowed the error.

Sample events: `from tests.support.events import load_event; load_event("apigw_v2_get_job")`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "loraforge",
        "POWERTOOLS_METRICS_NAMESPACE": "loraforge",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
)
# A developer's profile must not redirect credentials or region lookups.
os.environ.pop("AWS_PROFILE", None)

import pytest  # noqa: E402

from loraforge.local.aws_resources import StackResources, create_resources_from_template  # noqa: E402
from tests.support import ddb_guard  # noqa: E402

ddb_guard.install()

LAMBDA_TIMEOUT_MS = 30_000


def _serialize_dynamodb(patch: pytest.MonkeyPatch) -> None:
    """DynamoDB applies conflicting writes one at a time; moto's server handles each request on its own thread
    without locking, so concurrent TransactWriteItems interleave (two claims both pass a capacity condition, or
    a transaction's rollback copy fails with "dictionary changed size"). One lock around moto's DynamoDB and
    DynamoDB Streams handlers restores the real service's semantics; other services stay concurrent (an SQS
    long poll must not stall the table)."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    lock = threading.RLock()
    for handler in (DynamoHandler, DynamoDBStreamsHandler):
        original = handler.call_action

        def serialized(self: object, _original: Callable[[object], object] = original) -> object:
            with lock:
                return _original(self)

        patch.setattr(handler, "call_action", serialized)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # One werkzeug line per request would bury real failures in captured logs.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        _serialize_dynamodb(patch)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        patch.setenv("AWS_ENDPOINT_URL", url)
        try:
            yield url
        finally:
            server.stop()


def _reset_caches() -> None:
    from aws_lambda_powertools.utilities import parameters

    from loraforge.dal.clients import reset_clients
    from loraforge.settings import reset_settings

    reset_settings()
    reset_clients()
    parameters.clear_caches()


@pytest.fixture
def aws_stack(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackResources]:
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).close()
    stack = create_resources_from_template(moto_server)
    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    _reset_caches()
    # Count only what the test does, not the table creation above.
    ddb_guard.CALLS.clear()
    yield stack
    _reset_caches()


@pytest.fixture
def dynamodb_calls() -> ddb_guard.DynamoDBCalls:
    ddb_guard.CALLS.clear()
    return ddb_guard.CALLS


@dataclass
class FakeLambdaContext:
    """The attributes powertools and handlers read from a LambdaContext."""

    function_name: str = "loraforge-test-function"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:loraforge-test-function"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/loraforge-test-function"
    log_stream_name: str = "2026/11/21/[$LATEST]0123456789abcdef0123456789abcdef"
    timeout_ms: int = LAMBDA_TIMEOUT_MS
    _started: float = field(default_factory=time.monotonic, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.timeout_ms - int((time.monotonic() - self._started) * 1000))


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if ddb_guard.CALLS.scan_violations:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ddb_guard.CALLS.scan_violations:
        terminalreporter.section("DynamoDB Scan attempted (DESIGN §5: never Scan) - the run fails", red=True)
        for violation in ddb_guard.CALLS.scan_violations:
            terminalreporter.write_line(violation)
