"""Exactly-once side effects for notifications: powertools idempotency on the jobs table.

Each side effect (one email, one EventBridge event, one webhook enqueue, one delivery attempt)
runs under its own key, so a stream record or SQS message delivered twice, or a batch retried
after a partial failure, repeats none of the effects that already happened. An effect that raises
leaves no record and runs again on the retry.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, Protocol

from ..dal.clients import client
from ..settings import get_settings

RECORD_TTL_SECONDS = 7 * 24 * 3600
"""Longer than the stream's 24 h retention and the webhook queue's 4 days plus the retry schedule."""


class OnceGuard(Protocol):
    def run(self, key: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `action` unless an action with `key` already completed; return its (stored) result."""
        ...


@lru_cache(maxsize=4)
def _persistence_layer(table_name: str, ddb_client: Any) -> Any:
    # Built on first use (tests set the environment after import) and kept: constructing one
    # registers a botocore hook on the client, which must not pile up per call.
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=table_name, key_attr="pk", sort_key_attr="sk", expiry_attr="expires_at",
                                    static_pk_value="IDEMPOTENCY#notify", boto3_client=ddb_client)


class IdempotentOnce:
    """OnceGuard on DynamoDB (`IDEMPOTENCY#notify` / `<prefix>#<md5 of key>` items with a TTL)."""

    def __init__(self, key_prefix: str, *, lambda_context: Any = None, table_name: str | None = None) -> None:
        self.key_prefix = key_prefix
        self.lambda_context = lambda_context
        self.table_name = table_name or get_settings().table_name

    def run(self, key: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

        config = IdempotencyConfig(event_key_jmespath="key", expires_after_seconds=RECORD_TTL_SECONDS, raise_on_no_idempotency_key=True)
        if self.lambda_context is not None:
            # An invocation that dies mid-effect leaves an INPROGRESS record that expires with it,
            # instead of blocking the retry until the record's TTL.
            config.register_lambda_context(self.lambda_context)

        @idempotent_function(data_keyword_argument="claim", persistence_store=_persistence_layer(self.table_name, client("dynamodb")),
                             config=config, key_prefix=self.key_prefix)
        def perform_once(claim: dict[str, str]) -> dict[str, Any]:
            return action()

        return perform_once(claim={"key": key})
