"""The notifications topic (SNS): publish a readable message with filterable attributes, subscribe an email address."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from ..dal.clients import client
from ..settings import get_settings
from .email_messages import EmailMessage


class SubscriptionRefused(Exception):
    """SNS refused the address (malformed, or subscribed already with a different filter policy)."""


def owner_filter_policy(owner: str) -> dict[str, list[str]]:
    """The filter policy of an owner's email subscription: only messages whose `owner` attribute is theirs."""
    return {"owner": [owner]}


class SnsNotifier:
    def __init__(self, topic_arn: str | None = None) -> None:
        arn = topic_arn or get_settings().topic_arn
        if not arn:
            raise RuntimeError("no notifications topic configured: set TOPIC_ARN")
        self.topic_arn = arn

    @property
    def _sns(self) -> Any:
        return client("sns")

    def publish(self, message: EmailMessage) -> str:
        """1 Publish; returns the SNS message id."""
        attributes = {name: {"DataType": "String", "StringValue": value} for name, value in message.attributes.items() if value}
        resp = self._sns.publish(TopicArn=self.topic_arn, Subject=message.subject, Message=message.body, MessageAttributes=attributes)
        return str(resp["MessageId"])

    def subscribe_email(self, email: str, owner: str) -> str:
        """1 Subscribe with the owner's filter policy. The address must click the confirmation link SNS sends.

        Returns the subscription ARN ("pending confirmation" until the click). SNS itself treats a repeated
        identical subscribe as the same subscription.
        """
        try:
            resp = self._sns.subscribe(
                TopicArn=self.topic_arn, Protocol="email", Endpoint=email, ReturnSubscriptionArn=True,
                Attributes={"FilterPolicy": json.dumps(owner_filter_policy(owner)), "FilterPolicyScope": "MessageAttributes"},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("InvalidParameter", "InvalidParameterException"):
                raise SubscriptionRefused(exc.response["Error"].get("Message", "invalid parameter")) from exc
            raise
        return str(resp.get("SubscriptionArn", "pending confirmation"))
