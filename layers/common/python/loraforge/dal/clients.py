"""Cached boto3 clients. AWS_ENDPOINT_URL (moto, the local stack) redirects all of them."""

from __future__ import annotations

import os
from functools import cache
from typing import Any


@cache
def client(service: str) -> Any:
    # boto3 is imported on first use: a request that needs no AWS call (an estimate, the presets) never pays for it.
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 4})
    if service == "s3":
        # Path-style on a custom endpoint (moto on 127.0.0.1 has no bucket DNS); virtual-hosted on AWS.
        style = "path" if os.environ.get("AWS_ENDPOINT_URL") else "virtual"
        config = config.merge(Config(signature_version="s3v4", s3={"addressing_style": style}))
    return boto3.client(service, config=config)


def reset_clients() -> None:
    client.cache_clear()
