"""Secret values, read at runtime from Secrets Manager with caching (powertools parameters).

The local stack has no Secrets Manager secret for the signing key; it sets
LORAFORGE_LOCAL_SIGNING_KEY instead (never used by a deployed stack: the template does not set it).
"""

from __future__ import annotations

from .settings import get_settings

_MAX_AGE = 300


def _get_secret(arn: str) -> str:
    from aws_lambda_powertools.utilities import parameters  # keeps it off import time of every function

    value = parameters.get_secret(arn, max_age=_MAX_AGE)
    return value if isinstance(value, str) else value.decode()


def signing_key() -> bytes:
    """The master key every per-job secret, hook token and per-owner webhook secret derives from."""
    settings = get_settings()
    if settings.signing_secret_arn:
        return _get_secret(settings.signing_secret_arn).encode()
    if settings.local_signing_key:
        return settings.local_signing_key.encode()
    raise RuntimeError("no signing key configured: set SIGNING_SECRET_ARN")


def runpod_api_key() -> str:
    settings = get_settings()
    if settings.runpod_api_key_secret_arn:
        return _get_secret(settings.runpod_api_key_secret_arn).strip()
    if settings.local_runpod_api_key:
        return settings.local_runpod_api_key
    raise RuntimeError("no RunPod API key configured: set RUNPOD_API_KEY_SECRET_ARN")
