"""DynamoDB item (de)serialisation and opaque cursors. Low-level client: cheapest on the cold path."""

from __future__ import annotations

import base64
import binascii
import json
from decimal import Decimal
from functools import cache
from typing import Any

from ..models.errors import InvalidInput


@cache
def _codecs() -> tuple[Any, Any]:
    # Importing boto3.dynamodb imports boto3 itself: deferred to the first DynamoDB item (see clients.client).
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    # DynamoDB numbers must be Decimal; JSON round trip turns every float into one, exactly as written.
    return json.loads(json.dumps(value), parse_float=Decimal)


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "E" not in str(value) and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_from_dynamo(v) for v in value]
    return value


def serialize_value(value: Any) -> dict[str, Any]:
    return _codecs()[0].serialize(_to_dynamo(value))


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: serialize_value(v) for k, v in item.items() if v is not None}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo(_codecs()[1].deserialize(v)) for k, v in item.items()}


def encode_cursor(last_key: dict[str, Any] | None) -> str | None:
    if not last_key:
        return None
    plain = deserialize(last_key)
    return base64.urlsafe_b64encode(json.dumps(plain, sort_keys=True).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, expected_keys: set[str], partition: tuple[str, str]) -> dict[str, Any] | None:
    """Decode an opaque cursor and check it belongs to this query's partition (no peeking at others)."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        plain = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned", code="INVALID_CURSOR") from exc
    if (
        not isinstance(plain, dict)
        or set(plain) != expected_keys
        # DynamoDB refuses an empty key value (a ValidationException, i.e. a 500): only non-empty strings pass.
        or not all(isinstance(v, str) and 0 < len(v) <= 1024 for v in plain.values())
        or plain.get(partition[0]) != partition[1]
    ):
        raise InvalidInput("cursor is not one this API returned for this listing", code="INVALID_CURSOR")
    return {k: {"S": v} for k, v in plain.items()}
