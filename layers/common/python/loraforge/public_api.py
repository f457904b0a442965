"""The HTTP API's public base URL, where RunPod's webhook and the worker's events call back.

Dispatch and reconcile are told it (PUBLIC_API_URL, set by template.yaml from HttpApi). The API
function cannot be: its URL comes from the HttpApi that integrates it, a cycle CloudFormation
refuses. Yet the API starts jobs too (a hook or a cancel that frees a slot starts the next queued
job), so it takes the URL from the request it is serving: `requestContext.domainName` is set by
API Gateway (the execute-api host or the custom domain the caller used), not by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .settings import get_settings

_SERVING_BASE_URL: ContextVar[str | None] = ContextVar("serving_base_url", default=None)


def request_base_url(domain_name: str | None, stage: str | None) -> str | None:
    """`https://<domain>` for the `$default` stage, `https://<domain>/<stage>` for a named one; None without a domain."""
    if not domain_name:
        return None
    return f"https://{domain_name}" + ("" if stage in (None, "", "$default") else f"/{stage}")


@contextmanager
def serving_request_from(base_url: str | None) -> Iterator[None]:
    """While a request is served, jobs it starts call back to the API at `base_url` (unless PUBLIC_API_URL says otherwise)."""
    token = _SERVING_BASE_URL.set(base_url)
    try:
        yield
    finally:
        _SERVING_BASE_URL.reset(token)


def public_api_base_url() -> str | None:
    """PUBLIC_API_URL when configured, else the base URL of the request being served, else None."""
    return get_settings().public_api_url or _SERVING_BASE_URL.get()
