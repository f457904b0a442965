"""Fixtures for the notification tests against moto server: a webhook receiver on loopback, an EventBridge
capture queue, moto's SNS record, and the jobs table's real stream records."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loraforge.dal.clients import client
from loraforge.settings import reset_settings
from tests.integration.notify.helpers import ReceivedRequest, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            state.requests.append(ReceivedRequest(self.path, dict(self.headers.items()), body))
            if state.delay_seconds:
                time.sleep(state.delay_seconds)
            if state.redirect_to:
                self.send_response(302)
                self.send_header("location", state.redirect_to)
            else:
                self.send_response(state.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/loraforge"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def notify_stack(aws_stack, monkeypatch):
    """The stack plus the delivery function's DLQ setting (template: WEBHOOK_DLQ_URL on WebhookDeliveryFunction)."""
    monkeypatch.setenv("WEBHOOK_DLQ_URL", aws_stack.queues["WebhookDeliveryDLQ"])
    reset_settings()
    return aws_stack


@pytest.fixture
def allow_loopback(monkeypatch):
    monkeypatch.setenv("LORAFORGE_LOCAL_ALLOW_LOOPBACK", "true")
    reset_settings()


@pytest.fixture
def event_capture(notify_stack) -> Any:
    """Everything the `loraforge` source puts on the default bus, through a rule -> SQS queue."""
    sqs, events = client("sqs"), client("events")
    url = sqs.create_queue(QueueName="loraforge-events-capture")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="loraforge-capture", EventPattern=json.dumps({"source": ["loraforge"]}), State="ENABLED")
    events.put_targets(Rule="loraforge-capture", Targets=[{"Id": "capture", "Arn": arn}])

    def drain() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    return drain


