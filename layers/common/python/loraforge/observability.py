"""The one Logger, Metrics and Tracer of the service (cookbook: handlers/utils/observability.py)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "loraforge"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="loraforge", service=SERVICE)
# Patch only what the functions call out with (AWS SDK, RunPod and webhooks over httpx): patch_all would import
# and instrument every library X-Ray supports on each cold start.
tracer = Tracer(service=SERVICE, patch_modules=("botocore", "httpx"))
