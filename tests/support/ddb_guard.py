"""No-Scan guard (DESIGN §5: "Never `Scan`"): every DynamoDB call made through botocore is counted, and a Scan fails.

The hook is a botocore `before-call.dynamodb` handler. It is added to `botocore.handlers.BUILTIN_HANDLERS`, which
every new botocore session registers, so it also sees clients built from private sessions (powertools
idempotency and parameters create their own `boto3.session.Session()`), and to boto3's default session if one
already exists. Clients copy their session's handlers when they are created, so `install()` runs when
tests/conftest.py is imported, before any client exists.

A Scan raises `ScanForbidden` at once, and is also recorded: code under test that swallows the exception still
fails the run at session end (conftest's `pytest_sessionfinish`). A test that scans on purpose wraps the call in
`CALLS.expect_scan()`, which takes that one violation off the record.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.handlers

EVENT = "before-call.dynamodb"
_UNIQUE_ID = "loraforge-tests-no-scan-guard"


class ScanForbidden(AssertionError):
    """A DynamoDB Scan was attempted. Listings are Query on a GSI (DESIGN §5)."""


class DynamoDBCalls(Counter[str]):
    """DynamoDB operation name -> number of calls (e.g. `calls["Query"]`), plus the Scan attempts seen."""

    def __init__(self) -> None:
        super().__init__()
        self.scan_violations: list[str] = []

    @contextmanager
    def expect_scan(self) -> Iterator[None]:
        """For a test that scans on purpose: the Scan inside still raises, but does not fail the session.

        Fails if no Scan was attempted inside the block (the guard would then be broken).
        """
        before = len(self.scan_violations)
        yield
        attempted = self.scan_violations[before:]
        del self.scan_violations[before:]
        if not attempted:
            raise AssertionError("expect_scan(): no DynamoDB Scan was attempted inside the block")


CALLS = DynamoDBCalls()


def _before_call(model: Any, params: dict[str, Any], **_: Any) -> None:
    CALLS[model.name] += 1
    if model.name != "Scan":
        return
    table = _table_name(params)
    where = os.environ.get("PYTEST_CURRENT_TEST", "outside a test").removesuffix(" (call)")
    CALLS.scan_violations.append(f"{where}: Scan on {table}")
    raise ScanForbidden(f"DynamoDB Scan on {table} is forbidden (DESIGN §5): query a GSI instead")


def _table_name(params: dict[str, Any]) -> str:
    try:
        return json.loads(params.get("body") or b"{}").get("TableName", "?")
    except ValueError:
        return "?"


def install() -> None:
    """Registers the hook for every future botocore session and for boto3's default session (once per process)."""
    if (EVENT, _before_call) in botocore.handlers.BUILTIN_HANDLERS:
        return
    botocore.handlers.BUILTIN_HANDLERS.append((EVENT, _before_call))
    # A default session created before this point did not see BUILTIN_HANDLERS grow.
    if boto3.DEFAULT_SESSION is not None:
        boto3.DEFAULT_SESSION.events.register(EVENT, _before_call, unique_id=_UNIQUE_ID)
