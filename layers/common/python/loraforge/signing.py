"""HMAC derivations and the Standard Webhooks scheme (https://www.standardwebhooks.com/).

Pure stdlib: the worker image imports this module too (it signs its progress events).
- per-job secret  = HMAC(master, "job-secret:<job_id>")   → signs worker → API events
- RunPod hook token = HMAC(master, "runpod-hook:<job_id>")  → in the RunPod webhook URL
- per-owner secret = HMAC(master, "owner-webhook:<owner>") → signs user webhooks (whsec_…)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOLERANCE_SECONDS = 300


def _derive(master: bytes, label: str) -> bytes:
    return hmac.new(master, label.encode(), hashlib.sha256).digest()


def job_secret(master: bytes, job_id: str) -> str:
    return "whsec_" + base64.b64encode(_derive(master, f"job-secret:{job_id}")).decode()


def runpod_hook_token(master: bytes, job_id: str) -> str:
    return base64.urlsafe_b64encode(_derive(master, f"runpod-hook:{job_id}")).decode().rstrip("=")


def owner_webhook_secret(master: bytes, owner: str) -> str:
    return "whsec_" + base64.b64encode(_derive(master, f"owner-webhook:{owner}")).decode()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_secret_bytes(secret), to_sign, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


class SignatureError(ValueError):
    pass


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> str:
    """Verify Standard Webhooks headers (case-insensitive); returns the message id or raises SignatureError."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_raw, sig_header = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not ts_raw or not sig_header:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        ts = int(ts_raw)
    except ValueError as exc:
        raise SignatureError("webhook-timestamp is not an integer") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp outside the 5-minute tolerance")
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    for candidate in sig_header.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return msg_id
    raise SignatureError("no matching v1 signature")
