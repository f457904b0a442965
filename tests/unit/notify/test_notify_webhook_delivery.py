"""One webhook delivery attempt and what follows it: signed POST, backoff schedule, DLQ, SSRF refusal, pinning."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from loraforge.logic.deliver_webhook import DeliveryOutcome, deliver_webhook
from loraforge.notifications.url_safety import check_webhook_url
from loraforge.notifications.user_webhooks import (
    MAX_ATTEMPTS,
    RETRY_DELAYS_SECONDS,
    DeliveryResult,
    WebhookDelivery,
    WebhookEventType,
    pinned_target,
    retry_delay,
)
from loraforge.settings import reset_settings
from tests.support.events import load_event
from tests.unit.notify.fakes import SECRET, Recorder, ScriptedSender, delivery_ports

OK = DeliveryResult(ok=True, status_code=200)
HTTP_500 = DeliveryResult(ok=False, status_code=500, error="HTTP 500")


@pytest.fixture(autouse=True)
def deployed_stack_settings(monkeypatch):
    monkeypatch.delenv("LORAFORGE_LOCAL_ALLOW_LOOPBACK", raising=False)
    reset_settings()
    yield
    reset_settings()


def sample_body() -> str:
    return load_event("sqs_webhook_delivery")["Records"][0]["body"]


def test_a_delivery_is_posted_with_a_standard_webhooks_signature():
    # Given the message the notify function enqueued for a failed job
    recorder, sender = Recorder(), ScriptedSender([OK])
    # When it is delivered
    outcome = deliver_webhook(sample_body(), delivery_ports(recorder, sender))
    # Then the stored body was POSTed to the checked address, and an independent verifier accepts its signature
    assert outcome == DeliveryOutcome.DELIVERED
    [(url, address, body, headers)] = sender.posts
    assert (url, address) == ("https://hooks.example.com/loraforge", "93.184.216.34")
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "job.failed" and headers["webhook-id"] == payload["id"]
    assert headers["content-type"] == "application/json"
    assert recorder.webhooks == [] and recorder.dead == []


def test_the_retry_schedule_makes_at_least_five_attempts_over_at_least_an_hour():
    assert MAX_ATTEMPTS >= 5 and MAX_ATTEMPTS == len(RETRY_DELAYS_SECONDS) + 1
    assert sum(RETRY_DELAYS_SECONDS) >= 3600
    assert list(RETRY_DELAYS_SECONDS) == sorted(RETRY_DELAYS_SECONDS) and max(RETRY_DELAYS_SECONDS) <= 900  # SQS DelaySeconds cap
    assert retry_delay(MAX_ATTEMPTS) is None


def test_failures_are_retried_with_the_schedule_then_dead_lettered_with_the_last_error():
    # Given a receiver that always answers 500
    recorder, sender = Recorder(), ScriptedSender([HTTP_500])
    ports = delivery_ports(recorder, sender)
    body = sample_body()
    # When each re-enqueued attempt is handled in turn
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcomes.append(deliver_webhook(body, ports))
        if recorder.webhooks:
            delivery, _ = recorder.webhooks[-1]
            body = delivery.model_dump_json()
    # Then every attempt POSTed once, the delays follow the schedule, and the last attempt went to the DLQ
    assert len(sender.posts) == MAX_ATTEMPTS
    assert outcomes == [DeliveryOutcome.RETRY_SCHEDULED] * (MAX_ATTEMPTS - 1) + [DeliveryOutcome.DEAD_LETTERED]
    assert [d for _, d in recorder.webhooks] == list(RETRY_DELAYS_SECONDS)
    assert [r.attempt for r, _ in recorder.webhooks] == list(range(2, MAX_ATTEMPTS + 1))
    [dead] = recorder.dead
    assert isinstance(dead, WebhookDelivery) and dead.attempt == MAX_ATTEMPTS and dead.last_error == "HTTP 500"
    # and every attempt carried the same webhook-id and body (a receiver can deduplicate)
    assert len({h["webhook-id"] for _, _, _, h in sender.posts}) == 1 and len({b for _, _, b, _ in sender.posts}) == 1


def test_a_redelivered_message_is_not_posted_again():
    recorder, sender = Recorder(), ScriptedSender([OK])
    ports = delivery_ports(recorder, sender)
    deliver_webhook(sample_body(), ports)
    assert deliver_webhook(sample_body(), ports) == DeliveryOutcome.DELIVERED
    assert len(sender.posts) == 1


def test_a_url_resolving_to_a_private_address_is_refused_without_a_post_or_retry():
    # Given a public-looking host name whose DNS answer is a private address (deployed stack)
    recorder, sender = Recorder(), ScriptedSender([OK])
    ports = delivery_ports(recorder, sender)
    ports.check_url = lambda url: check_webhook_url(url, resolver=lambda host, port: ["10.0.3.7"])
    # When the delivery runs
    outcome = deliver_webhook(sample_body(), ports)
    # Then nothing is sent, nothing retried, and the DLQ says why
    assert outcome == DeliveryOutcome.DEAD_LETTERED and sender.posts == [] and recorder.webhooks == []
    assert "INVALID_WEBHOOK_URL" in recorder.dead[0].last_error and "private" in recorder.dead[0].last_error


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "::1", "fd00::1"])
def test_loopback_link_local_and_private_targets_are_refused_on_a_deployed_stack(address):
    recorder, sender = Recorder(), ScriptedSender([OK])
    ports = delivery_ports(recorder, sender)
    ports.check_url = lambda url: check_webhook_url(url, resolver=lambda host, port: [address])
    assert deliver_webhook(sample_body(), ports) == DeliveryOutcome.DEAD_LETTERED and sender.posts == []


def test_a_name_that_does_not_resolve_is_retried_later():
    recorder, sender = Recorder(), ScriptedSender([OK])
    ports = delivery_ports(recorder, sender)

    def no_answer(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    ports.check_url = lambda url: check_webhook_url(url, resolver=no_answer)
    assert deliver_webhook(sample_body(), ports) == DeliveryOutcome.RETRY_SCHEDULED
    assert sender.posts == [] and "does not resolve" in recorder.webhooks[0][0].last_error


def test_an_unreadable_message_is_kept_in_the_dlq():
    recorder = Recorder()
    assert deliver_webhook('{"not": "a delivery"}', delivery_ports(recorder, ScriptedSender([OK]))) == DeliveryOutcome.DEAD_LETTERED
    assert recorder.dead == ['{"not": "a delivery"}']


def test_with_too_little_time_left_the_attempt_is_put_back_untried():
    recorder, sender = Recorder(), ScriptedSender([OK])
    outcome = deliver_webhook(sample_body(), delivery_ports(recorder, sender), remaining_ms=lambda: 5_000)
    assert outcome == DeliveryOutcome.DEFERRED and sender.posts == []
    [(again, delay)] = recorder.webhooks
    assert again.attempt == 1 and delay == 0 and again.webhook_id == json.loads(sample_body())["webhook_id"]


@pytest.mark.parametrize(("url", "address", "target", "host", "sni"), [
    ("https://hooks.example.com/loraforge", "93.184.216.34", "https://93.184.216.34:443/loraforge", "hooks.example.com", "hooks.example.com"),
    ("https://hooks.example.com:8443/a?b=1", "93.184.216.34", "https://93.184.216.34:8443/a?b=1", "hooks.example.com:8443", "hooks.example.com"),
    ("https://hooks.example.com", "2606:2800:220:1::1", "https://[2606:2800:220:1::1]:443/", "hooks.example.com", "hooks.example.com"),
    ("http://localhost:8080/h", "127.0.0.1", "http://127.0.0.1:8080/h", "localhost:8080", None),
])
def test_the_post_goes_to_the_checked_address_with_the_original_host_and_sni(url, address, target, host, sni):
    got_target, headers, extensions = pinned_target(url, address)
    assert got_target == target and headers == {"host": host} and extensions.get("sni_hostname") == sni


def test_event_types_are_the_documented_ones():
    assert {t.value for t in WebhookEventType} == {"job.running", "job.checkpoint", "job.succeeded", "job.failed", "job.cancelled"}
