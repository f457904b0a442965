"""The API's public base URL: PUBLIC_API_URL when set, else the request being served."""

from __future__ import annotations

import pytest

from loraforge.public_api import public_api_base_url, request_base_url, serving_request_from
from loraforge.settings import reset_settings


@pytest.mark.parametrize(
    ("domain", "stage", "expected"),
    [
        ("k7p2m9x4qd.execute-api.us-east-1.amazonaws.com", "$default", "https://k7p2m9x4qd.execute-api.us-east-1.amazonaws.com"),
        ("api.example.com", "prod", "https://api.example.com/prod"),
        (None, "$default", None),
    ],
)
def test_the_base_url_is_the_domain_and_a_named_stage(domain: str | None, stage: str, expected: str | None) -> None:
    # Given API Gateway's requestContext domain and stage
    # When the base URL is derived
    # Then the $default stage adds no path, a named stage does, and no domain gives nothing
    assert request_base_url(domain, stage) == expected


def test_configured_url_wins_and_the_request_url_lasts_only_while_it_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no PUBLIC_API_URL
    monkeypatch.delenv("PUBLIC_API_URL", raising=False)
    reset_settings()

    # When a request is served, then after it
    with serving_request_from("https://from.request"):
        during = public_api_base_url()
    after = public_api_base_url()

    # Then the request's URL is used while it is served only
    assert (during, after) == ("https://from.request", None)

    # Given PUBLIC_API_URL is configured, Then it wins over the request
    monkeypatch.setenv("PUBLIC_API_URL", "https://configured")
    reset_settings()
    with serving_request_from("https://from.request"):
        assert public_api_base_url() == "https://configured"
    reset_settings()
