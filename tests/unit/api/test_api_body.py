"""Request bodies: bounded before parsing, strict JSON, an object."""

from __future__ import annotations

import base64
import json

import pytest

from loraforge.api.body import MAX_BODY_BYTES, InvalidJson, read_json_body
from loraforge.models.errors import PayloadTooLarge


def _event(body: str | None, base64_encoded: bool = False) -> dict:
    return {"body": body, "isBase64Encoded": base64_encoded}


def test_a_json_object_is_returned() -> None:
    assert read_json_body(_event('{"name": "ä", "n": 1.5}')) == {"name": "ä", "n": 1.5}


@pytest.mark.parametrize("body", [None, ""])
def test_no_body_is_none(body: str | None) -> None:
    assert read_json_body(_event(body)) is None


def test_a_base64_body_is_decoded() -> None:
    # Given API Gateway's base64 form of a JSON body
    encoded = base64.b64encode(json.dumps({"keep_latest": True}).encode()).decode()
    # Then it is read like plain text
    assert read_json_body(_event(encoded, base64_encoded=True)) == {"keep_latest": True}


def test_exactly_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    # Given bodies of exactly the limit and one byte over (multi-byte characters count as bytes)
    padding = "é" * ((MAX_BODY_BYTES - len('{"a": ""}')) // 2)
    at_limit = '{"a": "' + padding + '"}'
    at_limit += " " * (MAX_BODY_BYTES - len(at_limit.encode()))
    # Then
    assert len(at_limit.encode()) == MAX_BODY_BYTES and read_json_body(_event(at_limit)) == {"a": padding}
    with pytest.raises(PayloadTooLarge):
        read_json_body(_event(at_limit + " "))


def test_an_oversize_base64_body_is_refused_before_decoding() -> None:
    # Given a base64 body that is not even valid base64, but too long
    with pytest.raises(PayloadTooLarge):
        read_json_body(_event("!" * (MAX_BODY_BYTES * 2), base64_encoded=True))


@pytest.mark.parametrize(
    ("body", "base64_encoded", "fragment"),
    [
        ("{nope", False, "not valid JSON"),
        ("[1, 2]", False, "JSON object"),
        ('"text"', False, "JSON object"),
        ("null", False, "JSON object"),
        ('{"x": NaN}', False, "NaN"),
        ('{"x": Infinity}', False, "Infinity"),
        ('{"x": ' + "1" * 5000 + "}", False, "not valid JSON"),
        ("[" * 30_000 + "]" * 30_000, False, "not valid JSON"),
        ("\ud800", False, "not valid JSON"),
        ("**not base64**", True, "base64"),
        (base64.b64encode(b'{"x": "\xff"}').decode(), True, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_invalid_json(body: str, base64_encoded: bool, fragment: str) -> None:
    with pytest.raises(InvalidJson) as raised:
        read_json_body(_event(body, base64_encoded))
    assert raised.value.status == 400 and raised.value.code == "INVALID_JSON"
    assert fragment in raised.value.message
