"""The one Logger, Metrics and Tracer of the service (cookbook: handlers/utils/observability.py)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "loraforge"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="loraforge", service=SERVICE)
tracer = Tracer(service=SERVICE)
