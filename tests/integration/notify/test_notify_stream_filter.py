"""The NotifyFunction's stream filter in template.yaml lets through exactly the records notifications need
(checked with the pattern matcher the local stack's stream pump uses)."""

from __future__ import annotations

import json

import pytest
from moto.events.models import EventPattern

from loraforge.local.aws_resources import lambda_event_source_filters
from tests.support.events import load_event


def passes_notify_filter(record: dict) -> bool:
    patterns = [EventPattern.load(json.dumps(p)) for p in lambda_event_source_filters().get("NotifyFunction", [])]
    return not patterns or any(p.matches_event(record) for p in patterns)


def only_record(name: str) -> dict:
    [record] = load_event(name)["Records"]
    return record


@pytest.mark.parametrize("name", ["dynamodb_stream_job_failed_notify", "dynamodb_stream_job_succeeded",
                                  "dynamodb_stream_job_queued", "dynamodb_stream_dataset_invalid_notify"])
def test_job_and_dataset_changes_reach_the_notify_function(name):
    assert passes_notify_filter(only_record(name))


def test_a_new_checkpoint_reaches_the_notify_function():
    assert passes_notify_filter(only_record("dynamodb_stream_checkpoint_notify"))


@pytest.mark.parametrize("sk", ["EVT#000000000012", "MET#000000100", "DEDUPE#worker-7"])
def test_job_events_metrics_and_markers_do_not_invoke_it(sk):
    record = only_record("dynamodb_stream_checkpoint_notify")
    record["dynamodb"]["Keys"]["sk"] = record["dynamodb"]["NewImage"]["sk"] = {"S": sk}
    assert not passes_notify_filter(record)
