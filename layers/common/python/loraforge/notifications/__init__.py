"""User-facing notifications: SNS email, signed webhooks, EventBridge events."""
