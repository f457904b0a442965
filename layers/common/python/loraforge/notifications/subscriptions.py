"""Per-job `notify.email`: subscribe the address to the topic once per (owner, email).

A marker item in the jobs table remembers each subscription, so a redelivered INSERT (or the
owner's next job with the same address) does not subscribe again; it also means an address that
unsubscribed is not silently re-subscribed by the next job.
"""

from __future__ import annotations

from enum import StrEnum

from ..dal.jobs_table import JobsTable
from ..observability import logger
from .sns import SnsNotifier, SubscriptionRefused


class SubscriptionOutcome(StrEnum):
    EXISTING = "existing"
    SUBSCRIBED = "subscribed"
    REFUSED = "refused"


def normalize_email(email: str) -> str:
    return email.strip().lower()


class EmailSubscriptions:
    def __init__(self, sns: SnsNotifier, table: JobsTable) -> None:
        self._sns = sns
        self._table = table

    def ensure(self, owner: str, email: str) -> SubscriptionOutcome:
        """1 read; on the first time also 1 Subscribe + 1 write.

        Subscribe first, then write the marker: a crash in between subscribes again on redelivery,
        which SNS answers with the same subscription; the opposite order could lose it.
        """
        address = normalize_email(email)
        if self._table.get_email_subscription(owner, address) is not None:
            return SubscriptionOutcome.EXISTING
        try:
            arn = self._sns.subscribe_email(address, owner)
        except SubscriptionRefused as exc:
            # Retrying cannot fix this; remember it so the stream record is not retried for it.
            logger.warning("email subscription refused", extra={"owner": owner, "reason": str(exc)})
            self._table.put_email_subscription(owner, address, f"refused: {exc}")
            return SubscriptionOutcome.REFUSED
        self._table.put_email_subscription(owner, address, arn)
        logger.info("email subscribed to the notifications topic (confirmation pending)", extra={"owner": owner})
        return SubscriptionOutcome.SUBSCRIBED
