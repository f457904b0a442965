"""`GET /v1/webhook-secret`: the owner's Standard Webhooks secret, to verify the job webhooks loraforge sends."""

from __future__ import annotations

from .. import secrets_store, signing


def webhook_secret(owner: str) -> str:
    """`whsec_…`, derived from the master signing key by HMAC: stable for the owner, different for every owner."""
    return signing.owner_webhook_secret(secrets_store.signing_key(), owner)
