"""Derived secrets and the Standard Webhooks scheme, checked against the reference implementation."""

import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from loraforge import signing

MASTER = b"m" * 64


def test_derived_secrets_are_stable_distinct_and_scoped():
    # Given one master key / When deriving per-job and per-owner material / Then each is stable and distinct
    assert signing.job_secret(MASTER, "job_a") == signing.job_secret(MASTER, "job_a")
    assert signing.job_secret(MASTER, "job_a") != signing.job_secret(MASTER, "job_b")
    assert signing.runpod_hook_token(MASTER, "job_a") != signing.runpod_hook_token(MASTER, "job_b")
    assert signing.owner_webhook_secret(MASTER, "alice").startswith("whsec_")
    assert signing.job_secret(b"other" * 10, "job_a") != signing.job_secret(MASTER, "job_a")


def test_our_signature_verifies_with_the_reference_library():
    # Given a payload signed by us
    secret = signing.owner_webhook_secret(MASTER, "alice")
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_x"}}).encode()
    headers = signing.signed_headers(secret, "msg_1", body)
    # When the standardwebhooks package verifies it / Then it accepts it
    assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded", "data": {"id": "job_x"}}


def test_reference_signature_verifies_with_ours_and_tampering_fails():
    secret = signing.job_secret(MASTER, "job_a")
    body = b'{"seq":1}'
    ts = int(time.time())
    sig = Webhook(secret).sign("evt_1", __import__("datetime").datetime.fromtimestamp(ts, tz=__import__("datetime").UTC), body.decode())
    headers = {"Webhook-Id": "evt_1", "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}
    assert signing.verify(secret, headers, body) == "evt_1"
    with pytest.raises(signing.SignatureError):
        signing.verify(secret, headers, body + b" ")
    with pytest.raises(signing.SignatureError):
        signing.verify(signing.job_secret(MASTER, "job_b"), headers, body)


def test_old_or_missing_timestamps_are_refused():
    secret = signing.job_secret(MASTER, "job_a")
    old = int(time.time()) - 301
    headers = signing.signed_headers(secret, "evt_1", b"{}", timestamp=old)
    with pytest.raises(signing.SignatureError, match="tolerance"):
        signing.verify(secret, headers, b"{}")
    with pytest.raises(signing.SignatureError, match="missing"):
        signing.verify(secret, {}, b"{}")
