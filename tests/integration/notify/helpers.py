"""Helpers for the notification tests against moto server (moto runs in this process, so its backends are readable)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.models import Hyperparameters, Job, JobStatus, NotifyOptions, new_id, utcnow

HP = Hyperparameters(steps=100, learning_rate=1e-4, rank=8, alpha=8, batch_size=1, resolution=512, optimizer="adamw")


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1. `status` / `delay_seconds` / `redirect_to` set how it answers."""

    url: str
    requests: list[ReceivedRequest] = field(default_factory=list)
    status: int = 204
    delay_seconds: float = 0.0
    redirect_to: str | None = None


def moto_queue_messages(queue_url: str) -> list[tuple[dict[str, Any], int]]:
    """(body, DelaySeconds) of every message moto holds for the queue, delayed ones included, in send order."""
    from moto.sqs.models import sqs_backends

    name = queue_url.rstrip("/").rsplit("/", 1)[-1]
    for account in sqs_backends:
        queue = sqs_backends[account]["us-east-1"].queues.get(name)
        if queue is not None:
            return [(json.loads(m.body), round((m.delayed_until - m.sent_timestamp) / 1000) if m.delayed_until else 0)
                    for m in queue._messages]
    raise AssertionError(f"moto has no queue {name}")


def sns_sent(topic_arn: str) -> list[tuple[str, str, str | None, dict[str, Any] | None, str | None]]:
    """moto's record of every message published to the topic: (id, message, subject, attributes, group)."""
    from moto.sns.models import sns_backends

    account = topic_arn.split(":")[4]
    return list(sns_backends[account]["us-east-1"].topics[topic_arn].sent_notifications)


def sqs_event(bodies: list[dict[str, Any] | str]) -> dict[str, Any]:
    return {"Records": [{
        "messageId": f"m{i}", "receiptHandle": f"rh{i}", "body": b if isinstance(b, str) else json.dumps(b),
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:WebhookDeliveryQueue", "awsRegion": "us-east-1",
    } for i, b in enumerate(bodies)]}


def stream_records(table_name: str) -> list[dict[str, Any]]:
    """Every record on the table's stream so far, shaped as Lambda delivers them."""
    ddb, streams = client("dynamodb"), client("dynamodbstreams")
    arn = ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"]
    out: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for record in streams.get_records(ShardIterator=it, Limit=1000)["Records"]:
            record = dict(record)
            record["eventSourceARN"] = arn
            record["dynamodb"] = {k: (str(v) if k == "ApproximateCreationDateTime" else v) for k, v in record["dynamodb"].items()}
            out.append(record)
    return out


def status_change(records: list[dict[str, Any]], job_id: str, old: str, new: str) -> dict[str, Any]:
    for r in records:
        d = r["dynamodb"]
        if (r["eventName"] == "MODIFY" and d["Keys"]["pk"]["S"] == f"JOB#{job_id}" and d["Keys"]["sk"]["S"] == "META"
                and d["OldImage"]["status"]["S"] == old and d["NewImage"]["status"]["S"] == new):
            return r
    raise AssertionError(f"no {old}->{new} record for {job_id} on the stream")


def new_job(owner: str = "alice", **notify: Any) -> Job:
    now = utcnow() - timedelta(minutes=5)
    return Job(id=new_id("job"), owner=owner, status=JobStatus.QUEUED, name="mychar v1", preset="tiny-sd",
               dataset_id="ds_" + "0" * 20, hyperparameters=HP, notify=NotifyOptions(**notify), created_at=now, updated_at=now)


def run_to_running(table: JobsTable, job: Job) -> Job:
    job = table.transition(job, JobStatus.STARTING)
    return table.transition(job, JobStatus.RUNNING, started_at=utcnow() - timedelta(minutes=4))
