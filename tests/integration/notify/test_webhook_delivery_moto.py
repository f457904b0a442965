"""Webhook delivery against moto server and loopback receivers: retries with growing delays, the DLQ after the
last attempt, unsafe targets refused unless the local stack's own setting allows loopback."""

from __future__ import annotations

import socket

import pytest

from functions.notify import webhook_app
from loraforge.logic.deliver_webhook import DeliveryOutcome, default_delivery_ports, deliver_webhook
from loraforge.models import NotifyOptions
from loraforge.notifications.user_webhooks import MAX_ATTEMPTS, WebhookDelivery, WebhookEventType, WebhookSender
from tests.integration.notify.helpers import moto_queue_messages, sqs_event


def delivery_to(url: str) -> WebhookDelivery:
    return WebhookDelivery(webhook_id="msg_0123456789abcdef0123456789abcdef", event_type=WebhookEventType.SUCCEEDED,
                           job_id="job_0000000000aaaaaaaaaa", owner="alice", url=url,
                           payload='{"type":"job.succeeded","id":"msg_0123456789abcdef0123456789abcdef","data":{}}')


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def drive_until_dead_lettered(stack, first: WebhookDelivery, lambda_context) -> list[tuple[int, int]]:
    """Run the delivery handler on each re-enqueued message (no real waiting); returns (attempt, delay) per retry."""
    queue_url = stack.queues["WebhookDeliveryQueue"]
    seen, retries = 0, []
    body = first.model_dump(mode="json")
    for _ in range(MAX_ATTEMPTS):
        assert webhook_app.lambda_handler(sqs_event([body]), lambda_context) == {"batchItemFailures": []}
        queued = moto_queue_messages(queue_url)
        if len(queued) == seen:
            break
        body, delay = queued[-1]
        seen = len(queued)
        retries.append((body["attempt"], delay))
    return retries


@pytest.mark.parametrize("failure", ["http_500", "connection_refused"])
def test_a_failing_receiver_is_retried_with_growing_delays_then_dead_lettered(
        notify_stack, allow_loopback, receiver, lambda_context, failure):
    # Given a receiver that answers 500, or a port nobody listens on
    receiver.status = 500
    url = receiver.url if failure == "http_500" else closed_port_url()
    # When the delivery function handles the first attempt and then every re-enqueued one
    retries = drive_until_dead_lettered(notify_stack, delivery_to(url), lambda_context)
    # Then every attempt was made (8 POSTs for the 500 receiver), each retry later than the one before, over more than an hour
    if failure == "http_500":
        assert len(receiver.requests) == MAX_ATTEMPTS
    attempts, delays = [a for a, _ in retries], [d for _, d in retries]
    assert attempts == list(range(2, MAX_ATTEMPTS + 1)) and MAX_ATTEMPTS >= 5
    assert delays == sorted(delays) and delays[0] < delays[-1] and max(delays) <= 900
    assert sum(delays) >= 3600
    # and after the last attempt the message sits in the DLQ with the last error
    [(dead, _)] = moto_queue_messages(notify_stack.queues["WebhookDeliveryDLQ"])
    assert dead["attempt"] == MAX_ATTEMPTS and dead["webhook_id"] == "msg_0123456789abcdef0123456789abcdef"
    assert ("HTTP 500" if failure == "http_500" else "could not connect") in dead["last_error"]


def test_a_receiver_that_does_not_answer_in_time_counts_as_a_failed_attempt(notify_stack, allow_loopback, receiver, lambda_context):
    # Given a receiver slower than the delivery timeout (shortened here so the test does not wait 10 s)
    receiver.delay_seconds = 1.5
    ports = default_delivery_ports(lambda_context)
    ports.sender = WebhookSender(timeout_seconds=0.3)
    # When one attempt runs
    outcome = deliver_webhook(delivery_to(receiver.url).model_dump_json(), ports)
    # Then it is re-enqueued as attempt 2 with the timeout as its error
    assert outcome == DeliveryOutcome.RETRY_SCHEDULED
    [(retry, delay)] = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    assert retry["attempt"] == 2 and delay == 30 and "timed out" in retry["last_error"]


def test_a_redirect_is_not_followed_and_counts_as_a_failure(notify_stack, allow_loopback, receiver, lambda_context):
    # Given a receiver that redirects to a link-local metadata address
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    # When the delivery runs
    webhook_app.lambda_handler(sqs_event([delivery_to(receiver.url).model_dump(mode="json")]), lambda_context)
    # Then the redirect was not followed (one request, to the receiver) and a retry is queued with the reason
    assert len(receiver.requests) == 1
    [(retry, _)] = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    assert "HTTP 302" in retry["last_error"] and "not followed" in retry["last_error"]


def test_a_loopback_receiver_is_refused_by_a_deployed_stack(notify_stack, receiver, lambda_context):
    # Given a deployed stack (the local loopback setting is not set) and a webhook URL on loopback
    # When the delivery runs
    webhook_app.lambda_handler(sqs_event([delivery_to(receiver.url).model_dump(mode="json")]), lambda_context)
    # Then nothing is POSTed, nothing is retried, and the DLQ says why
    assert receiver.requests == []
    assert moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"]) == []
    [(dead, _)] = moto_queue_messages(notify_stack.queues["WebhookDeliveryDLQ"])
    assert "INVALID_WEBHOOK_URL" in dead["last_error"]


def test_a_loopback_receiver_is_accepted_on_the_local_stack(notify_stack, allow_loopback, receiver, lambda_context):
    webhook_app.lambda_handler(sqs_event([delivery_to(receiver.url).model_dump(mode="json")]), lambda_context)
    assert len(receiver.requests) == 1
    assert moto_queue_messages(notify_stack.queues["WebhookDeliveryDLQ"]) == []


def test_no_job_field_can_turn_on_loopback_delivery():
    # The only switch is the stack's LORAFORGE_LOCAL_ALLOW_LOOPBACK; a job's notify options refuse anything else.
    with pytest.raises(ValueError):
        NotifyOptions.model_validate({"webhook_url": "http://127.0.0.1/x", "allow_loopback": True})
    assert set(NotifyOptions.model_fields) == {"webhook_url", "email", "on_running"}
