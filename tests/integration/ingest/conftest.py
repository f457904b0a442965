"""Ingest against moto: objects are really put in the template's bucket, and S3-via-EventBridge events
for them go through the real `functions.ingest.app.lambda_handler`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import pytest

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.local.aws_resources import StackResources
from loraforge.models.dataset import Dataset
from loraforge.models.job import Job
from loraforge.settings import reset_settings
from tests.support.events import load_event

OWNER = "user-a"
OTHER_OWNER = "user-b"
ENDPOINTS = {"cpu": "ep-cpu-test", "24gb": "ep-24gb-test"}


@dataclass
class IngestRig:
    stack: StackResources
    context: Any

    @property
    def s3(self) -> Any:
        return client("s3")

    def put(self, key: str, data: bytes) -> dict[str, Any]:
        return self.s3.put_object(Bucket=self.stack.bucket, Key=key, Body=data)

    def event_for(self, key: str, put: dict[str, Any], size: int) -> dict[str, Any]:
        """The event S3 sends through EventBridge for this object version (key form-encoded as S3 does)."""
        event = load_event("s3_object_created_eventbridge")
        event["resources"] = [f"arn:aws:s3:::{self.stack.bucket}"]
        event["detail"]["bucket"]["name"] = self.stack.bucket
        event["detail"]["object"] = {"key": quote_plus(key, safe="/"), "size": size, "etag": put["ETag"].strip('"'),
                                     "version-id": put.get("VersionId"), "sequencer": "0067409A3C62E9F8B1"}
        return event

    def upload(self, key: str, data: bytes) -> dict[str, Any]:
        """Put the object and return its event."""
        return self.event_for(key, self.put(key, data), len(data))

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        from functions.ingest.app import lambda_handler

        return lambda_handler(json.loads(json.dumps(event)), self.context)

    def drop(self, key: str, data: bytes) -> dict[str, Any]:
        return self.handle(self.upload(key, data))

    def dataset(self, dataset_id: str) -> Dataset:
        found = JobsTable().get_dataset(dataset_id)
        assert found is not None, dataset_id
        return found

    def jobs(self, owner: str = OWNER) -> list[Job]:
        return JobsTable().list_jobs_by_owner(owner, limit=100).items

    def manifest(self, dataset: Dataset) -> dict[str, Any]:
        assert dataset.manifest_key
        return json.loads(self.s3.get_object(Bucket=self.stack.bucket, Key=dataset.manifest_key)["Body"].read())

    def exists(self, key: str) -> bool:
        return bool(self.s3.list_objects_v2(Bucket=self.stack.bucket, Prefix=key).get("KeyCount"))


@pytest.fixture
def ingest(aws_stack: StackResources, monkeypatch: pytest.MonkeyPatch, lambda_context: Any) -> Iterator[IngestRig]:
    monkeypatch.setenv("RUNPOD_ENDPOINTS", json.dumps(ENDPOINTS))
    reset_settings()
    yield IngestRig(stack=aws_stack, context=lambda_context)
    reset_settings()
