"""The owner is the JWT authorizer's verified `sub`, usable as an owner id."""

from __future__ import annotations

import pytest

from loraforge.api.auth import owner_from_event
from loraforge.models.errors import Unauthorized


def _event(claims: object) -> dict:
    return {"requestContext": {"authorizer": {"jwt": {"claims": claims, "scopes": None}}}}


def test_the_sub_claim_is_the_owner() -> None:
    assert owner_from_event(_event({"sub": "3f1c2b7e-9a8d-4c6b-8e5f-2d1a0b9c8e7f", "username": "alice"})) == (
        "3f1c2b7e-9a8d-4c6b-8e5f-2d1a0b9c8e7f")


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"requestContext": {}},
        {"requestContext": {"authorizer": None}},
        {"requestContext": {"authorizer": {"lambda": {"sub": "x"}}}},
        _event(None),
        _event({}),
        _event({"sub": ""}),
        _event({"sub": 42}),
        _event({"sub": "a/b"}),
        _event({"sub": "../x"}),
        _event({"sub": "x" * 129}),
    ],
)
def test_a_missing_or_unusable_sub_is_401(event: dict) -> None:
    with pytest.raises(Unauthorized) as raised:
        owner_from_event(event)
    assert raised.value.status == 401 and raised.value.code == "UNAUTHORIZED"
