"""The single DynamoDB table (DESIGN §5): jobs, events, metrics, artifacts, datasets, capacity.

Item layout
  job       JOB#<id> / META          gsi1: OWNER#<owner> / <created_at>#<id>   gsi2: STATUS#<status> / <created_at>#<id>
  event     JOB#<id> / EVT#<seq:012d>
  dedupe    JOB#<id> / DEDUPE#<key>   (worker event idempotency markers)
  metric    JOB#<id> / MET#<step:09d>
  artifact  JOB#<id> / ART#<kind>#<step:09d>#<name>
  dataset   DS#<id>  / META          gsi1: DSOWNER#<owner> / <created_at>#<id>
  capacity  CAP#global / META, CAP#owner#<owner> / META   (`holders`: string set of job ids)
  email sub NOTIFY#<owner> / EMAIL#<address>   (one SNS email subscription per owner and address)
  cost due  JOB#<id> / COST#<runpod_job_id>  gsi2: STATUS#cost_pending / <created_at>#<id>#<runpod_job_id>   (TTL 1 day)
            a run that ended without its billing being recorded (its end came from a worker event, reconcile or a
            cancel, not from RunPod's status): reconcile asks RunPod for its billed time, then deletes the marker

gsi2 keys exist only on non-terminal jobs (sparse), so the queue and active scans never see
finished work; the cost markers share the index under their own partition. There is no Scan
anywhere: listing is Query with an opaque cursor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from ..models.artifact import Artifact
from ..models.common import iso, utcnow
from ..models.dataset import Dataset
from ..models.errors import Conflict, InvalidTransition, NotFound
from ..models.event import EventType, JobEvent, MetricPoint
from ..models.job import Job
from ..models.status import (
    DATASET_TRANSITIONS,
    DatasetStatus,
    JobStatus,
    check_transition,
    holds_capacity,
    is_terminal,
)
from ..settings import get_settings
from .clients import client
from .dynamo import decode_cursor, deserialize, encode_cursor, serialize, serialize_value

META = "META"
GLOBAL_CAPACITY = "CAP#global"
PENDING_COST_INDEX_PK = "STATUS#cost_pending"
PENDING_COST_TTL_SECONDS = 24 * 3600
# Stored on a job created under an Idempotency-Key: which request made it (see create_job).
REQUEST_FINGERPRINT_ATTR = "request_fingerprint"
_KEY_ATTRS = {"pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "entity", "expires_at", "event_seq", REQUEST_FINGERPRINT_ATTR}
MAX_PAGE = 100


class JobExists(Conflict):
    """`create_job` found its id taken (409 JOB_EXISTS). For a write with a request fingerprint, `existing` is the
    stored job and `request_fingerprint` the one it was written with (None if it has none)."""

    code = "JOB_EXISTS"

    def __init__(self, job_id: str, existing: Job | None = None, request_fingerprint: str | None = None) -> None:
        super().__init__(f"job {job_id} already exists")
        self.existing = existing
        self.request_fingerprint = request_fingerprint


class CapacityFull(Exception):
    """No free slot (global or for the owner): the job stays queued."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"no free capacity slot ({scope})")
        self.scope = scope


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def owner_capacity_pk(owner: str) -> str:
    return f"CAP#owner#{owner}"


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None


@dataclass(frozen=True)
class PendingCost:
    """A finished RunPod run whose billed time is not in its job's cost yet."""

    job_id: str
    runpod_job_id: str
    endpoint_id: str
    created_at: datetime


def _pending_cost_key(job_id: str, runpod_job_id: str) -> dict[str, str]:
    return {"pk": job_pk(job_id), "sk": f"COST#{runpod_job_id}"}


def _job_index_keys(job: Job) -> dict[str, Any]:
    created = iso(job.created_at)
    keys = {"gsi1pk": f"OWNER#{job.owner}", "gsi1sk": f"{created}#{job.id}"}
    if not is_terminal(job.status):
        keys |= {"gsi2pk": f"STATUS#{job.status}", "gsi2sk": f"{created}#{job.id}"}
    return keys


def _job_item(job: Job) -> dict[str, Any]:
    body = job.model_dump(mode="json")
    return {"pk": job_pk(job.id), "sk": META, "entity": "job", **_job_index_keys(job), **body}


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in _KEY_ATTRS}


def strip_keys(item: dict[str, Any]) -> dict[str, Any]:
    """A deserialized item without its key/index attributes, ready for `Job.model_validate` (e.g. a stream image)."""
    return _strip(item)


def _cancellation_codes(exc: ClientError) -> list[str]:
    return [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]


class JobsTable:
    def __init__(self, table_name: str | None = None) -> None:
        self.name = table_name or get_settings().table_name

    @property
    def _ddb(self) -> Any:
        return client("dynamodb")

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, job: Job, *, request_fingerprint: str | None = None) -> Job:
        """1 write. Fails with JobExists (a Conflict) if the id exists (random ids: this guards replays).

        `request_fingerprint` is for ids derived from an Idempotency-Key: it is stored on the item, and when the id
        is taken the failed write itself returns the stored item (ReturnValuesOnConditionCheckFailure), so JobExists
        carries the existing job and its fingerprint without a second call.
        """
        item = _job_item(job)
        returns: dict[str, str] = {}
        if request_fingerprint is not None:
            item[REQUEST_FINGERPRINT_ATTR] = request_fingerprint
            returns = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        try:
            self._ddb.put_item(TableName=self.name, Item=serialize(item), ConditionExpression="attribute_not_exists(pk)", **returns)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                stored = deserialize(exc.response["Item"]) if "Item" in exc.response else None
                existing = Job.model_validate(_strip(stored)) if stored else None
                raise JobExists(job.id, existing, stored.get(REQUEST_FINGERPRINT_ATTR) if stored else None) from exc
            raise
        return job

    def get_job(self, job_id: str, consistent: bool = True) -> Job | None:
        """1 read."""
        resp = self._ddb.get_item(
            TableName=self.name, Key=serialize({"pk": job_pk(job_id), "sk": META}), ConsistentRead=consistent
        )
        item = resp.get("Item")
        return Job.model_validate(_strip(deserialize(item))) if item else None

    def get_job_for_owner(self, job_id: str, owner: str) -> Job:
        """Another owner's job is indistinguishable from a missing one (404, never 403)."""
        job = self.get_job(job_id) if job_id.startswith("job_") else None
        if job is None or job.owner != owner:
            raise NotFound(f"job {job_id} not found", code="JOB_NOT_FOUND")
        return job

    def list_jobs_by_owner(
        self, owner: str, *, limit: int = 20, cursor: str | None = None, status: JobStatus | None = None
    ) -> Page:
        """Newest first. 1 query per page (a status filter may return short pages; keep following the cursor)."""
        return self._index_page(Job, "gsi1", f"OWNER#{owner}", newest_first=True, limit=limit, cursor=cursor, status=status)

    def list_jobs_by_status(self, status: JobStatus, *, limit: int = 25, cursor: str | None = None) -> Page:
        """Oldest first (the queue order). Only non-terminal statuses are indexed."""
        return self._index_page(Job, "gsi2", f"STATUS#{status}", newest_first=False, limit=limit, cursor=cursor)

    def _index_page(self, model: type[Job] | type[Dataset], index: str, pk: str, *, newest_first: bool, limit: int,
                    cursor: str | None, status: JobStatus | None = None) -> Page:
        """One Query page of a GSI partition; the cursor must come from the same partition."""
        pk_attr, sk_attr = f"{index}pk", f"{index}sk"
        params: dict[str, Any] = {
            "TableName": self.name,
            "IndexName": index,
            "KeyConditionExpression": f"{pk_attr} = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ScanIndexForward": not newest_first,
            "Limit": min(limit, MAX_PAGE),
        }
        start = decode_cursor(cursor, expected_keys={"pk", "sk", pk_attr, sk_attr}, partition=(pk_attr, pk))
        if start:
            params["ExclusiveStartKey"] = start
        if status:
            params["FilterExpression"] = "#s = :s"
            params["ExpressionAttributeNames"] = {"#s": "status"}
            params["ExpressionAttributeValues"][":s"] = {"S": str(status)}
        resp = self._ddb.query(**params)
        items = [model.model_validate(_strip(deserialize(i))) for i in resp.get("Items", [])]
        return Page(items=items, next_cursor=encode_cursor(resp.get("LastEvaluatedKey")))

    def transition(self, job: Job, target: JobStatus, **changes: Any) -> Job:
        """Move `job` to `target` if it is still at (status, version); THE way a status changes.

        Taking a capacity slot (entering an active status) or releasing one (leaving it) happens in
        the same TransactWriteItems as the status write. Raises InvalidTransition when the table
        forbids it or another writer got there first, CapacityFull when no slot is free.
        """
        check_transition(job.status, target)
        now = utcnow()
        updated = job.model_copy(update={**changes, "status": target, "version": job.version + 1, "updated_at": now})
        if is_terminal(target) and updated.finished_at is None:
            updated.finished_at = now
        # SET only what this transition changes: progress, the event counter and other fields written
        # concurrently by update_job/append_event must survive a transition.
        dumped = updated.model_dump(mode="json")
        fields = {"status", "version", "updated_at", *changes} | ({"finished_at"} if is_terminal(target) else set())
        set_values = {f: dumped[f] for f in sorted(fields)}
        remove: list[str] = []
        if is_terminal(target):
            remove = ["gsi2pk", "gsi2sk"]
        else:
            set_values |= {k: v for k, v in _job_index_keys(updated).items() if k.startswith("gsi2")}
        names = {f"#a{i}": k for i, k in enumerate(set_values)} | {f"#r{i}": k for i, k in enumerate(remove)}
        names |= {"#s": "status", "#v": "version"}
        values = {f":a{i}": serialize_value(v) for i, v in enumerate(set_values.values())}
        values |= {":from": {"S": str(job.status)}, ":ver": serialize_value(job.version)}
        expr = "SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(set_values)))
        if remove:
            expr += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        update = {
            "TableName": self.name,
            "Key": serialize({"pk": job_pk(job.id), "sk": META}),
            "UpdateExpression": expr,
            "ConditionExpression": "#s = :from AND #v = :ver",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        acquire = holds_capacity(target) and not holds_capacity(job.status)
        release = holds_capacity(job.status) and not holds_capacity(target)
        if not acquire and not release:
            try:
                self._ddb.update_item(**update)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    raise InvalidTransition(
                        f"job {job.id} changed concurrently (expected '{job.status}' v{job.version})",
                        code="CONCURRENT_UPDATE",
                    ) from exc
                raise
            return updated
        settings = get_settings()
        scopes = [(GLOBAL_CAPACITY, settings.global_concurrency), (owner_capacity_pk(job.owner), settings.owner_concurrency)]
        items: list[dict[str, Any]] = [{"Update": update}]
        for pk, limit in scopes:
            key = serialize({"pk": pk, "sk": META})
            member = {":job": {"SS": [job.id]}}
            if acquire:
                items.append({"Update": {
                    "TableName": self.name, "Key": key,
                    "UpdateExpression": "ADD holders :job",
                    "ConditionExpression": "attribute_not_exists(holders) OR size(holders) < :limit",
                    "ExpressionAttributeValues": {**member, ":limit": {"N": str(limit)}},
                }})
            else:
                items.append({"Update": {
                    "TableName": self.name, "Key": key,
                    "UpdateExpression": "DELETE holders :job",
                    "ExpressionAttributeValues": member,
                }})
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            codes = _cancellation_codes(exc)
            if codes and codes[0] == "ConditionalCheckFailed":
                raise InvalidTransition(
                    f"job {job.id} changed concurrently (expected '{job.status}' v{job.version})",
                    code="CONCURRENT_UPDATE",
                ) from exc
            if "ConditionalCheckFailed" in codes[1:]:
                scope = "global" if codes[1] == "ConditionalCheckFailed" else "owner"
                raise CapacityFull(scope) from exc
            raise
        return updated

    def update_job(self, job_id: str, *, set_fields: dict[str, Any], only_if_status: Iterable[JobStatus] | None = None,
                   condition: str | None = None, values: dict[str, Any] | None = None) -> bool:
        """Update non-status fields (progress, runpod id, cost…). Never touches status or version.

        Returns False when the condition did not hold (e.g. the job is already terminal).
        """
        names = {f"#f{i}": k for i, k in enumerate(set_fields)}
        vals = {f":v{i}": serialize_value(v) for i, v in enumerate(set_fields.values())}
        expr = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(set_fields)))
        conds = ["attribute_exists(pk)"]
        if only_if_status is not None:
            statuses = list(only_if_status)
            names["#st"] = "status"
            for i, s in enumerate(statuses):
                vals[f":st{i}"] = {"S": str(s)}
            conds.append("#st IN (" + ", ".join(f":st{i}" for i in range(len(statuses))) + ")")
        if condition:
            conds.append(f"({condition})")
            vals |= {k: serialize_value(v) for k, v in (values or {}).items()}
        try:
            self._ddb.update_item(
                TableName=self.name, Key=serialize({"pk": job_pk(job_id), "sk": META}), UpdateExpression=expr,
                ConditionExpression=" AND ".join(conds), ExpressionAttributeNames=names, ExpressionAttributeValues=vals,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    # -- events, metrics, artifacts ----------------------------------------------------------------
    def append_event(self, job_id: str, type_: EventType, data: dict[str, Any] | None = None, *,
                     dedupe_key: str | None = None, at: datetime | None = None) -> JobEvent | None:
        """1 update (allocate seq) + 1 write (or 1 transaction with a dedupe marker).

        With `dedupe_key` a second append with the same key is a no-op returning None: worker
        events and webhooks are delivered at least once.
        """
        resp = self._ddb.update_item(
            TableName=self.name, Key=serialize({"pk": job_pk(job_id), "sk": META}),
            UpdateExpression="ADD event_seq :one", ExpressionAttributeValues={":one": {"N": "1"}},
            ConditionExpression="attribute_exists(pk)", ReturnValues="UPDATED_NEW",
        )
        seq = int(resp["Attributes"]["event_seq"]["N"])
        event = JobEvent(seq=seq, type=type_, at=at or utcnow(), data=data or {})
        item = {"pk": job_pk(job_id), "sk": f"EVT#{seq:012d}", "entity": "event", **event.model_dump(mode="json")}
        if dedupe_key is None:
            self._ddb.put_item(TableName=self.name, Item=serialize(item))
            return event
        try:
            self._ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": self.name, "Item": serialize({"pk": job_pk(job_id), "sk": f"DEDUPE#{dedupe_key}", "seq": seq}),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Put": {"TableName": self.name, "Item": serialize(item)}},
            ])
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TransactionCanceledException" and _cancellation_codes(exc)[0] == "ConditionalCheckFailed":
                return None
            raise
        return event

    def list_events(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[JobEvent]:
        return self.list_events_page(job_id, after=after, limit=limit)[0]

    def list_events_page(self, job_id: str, *, after: int = 0, limit: int = 100) -> tuple[list[JobEvent], bool]:
        """Events with seq > `after`, oldest first, and whether more follow. 1 query.

        A page can hold fewer than `limit` events with more to come (DynamoDB stops at 1 MB), so "more" is
        DynamoDB's LastEvaluatedKey, not a full page."""
        resp = self._ddb.query(
            TableName=self.name,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={":pk": {"S": job_pk(job_id)}, ":lo": {"S": f"EVT#{after + 1:012d}"},
                                       ":hi": {"S": "EVT#999999999999"}},
            Limit=min(limit, 500),
        )
        return [JobEvent.model_validate(_strip(deserialize(i))) for i in resp.get("Items", [])], "LastEvaluatedKey" in resp

    def put_metrics(self, job_id: str, points: Iterable[MetricPoint]) -> int:
        """Idempotent by step (a redelivered point overwrites itself). Batched 25 per call."""
        reqs = [{"PutRequest": {"Item": serialize({"pk": job_pk(job_id), "sk": f"MET#{p.step:09d}", "entity": "metric",
                                                  **p.model_dump(mode="json")})}} for p in points]
        for i in range(0, len(reqs), 25):
            pending: dict[str, Any] = {self.name: reqs[i:i + 25]}
            while pending:
                pending = self._ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        return len(reqs)

    def list_metrics(self, job_id: str, *, limit: int = 5000) -> list[MetricPoint]:
        return [MetricPoint.model_validate(_strip(i)) for i in self._query_prefix(job_pk(job_id), "MET#", limit)]

    def put_artifact(self, job_id: str, artifact: Artifact) -> None:
        """Idempotent by (kind, step, name)."""
        name = artifact.name or artifact.key.rsplit("/", 1)[-1]
        art = artifact.model_copy(update={"name": name, "created_at": artifact.created_at or utcnow()})
        item = {"pk": job_pk(job_id), "sk": f"ART#{art.kind}#{art.step:09d}#{name}", "entity": "artifact",
                **art.model_dump(mode="json")}
        self._ddb.put_item(TableName=self.name, Item=serialize(item))

    def delete_artifact(self, job_id: str, artifact: Artifact) -> None:
        """1 delete; idempotent. Checkpoint retention removes the record of a pruned file."""
        name = artifact.name or artifact.key.rsplit("/", 1)[-1]
        self._ddb.delete_item(TableName=self.name,
                              Key=serialize({"pk": job_pk(job_id), "sk": f"ART#{artifact.kind}#{artifact.step:09d}#{name}"}))

    def list_artifacts(self, job_id: str, kind: str | None = None) -> list[Artifact]:
        prefix = f"ART#{kind}#" if kind else "ART#"
        return [Artifact.model_validate(_strip(i)) for i in self._query_prefix(job_pk(job_id), prefix, 10_000)]

    def _query_prefix(self, pk: str, prefix: str, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {
            "TableName": self.name, "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":p": {"S": prefix}},
        }
        while len(out) < limit:
            resp = self._ddb.query(**params)
            out.extend(deserialize(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                break
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return out[:limit]

    # -- datasets ------------------------------------------------------------------------------
    def create_dataset(self, dataset: Dataset) -> Dataset:
        item = {"pk": f"DS#{dataset.id}", "sk": META, "entity": "dataset", "gsi1pk": f"DSOWNER#{dataset.owner}",
                "gsi1sk": f"{iso(dataset.created_at)}#{dataset.id}", **dataset.model_dump(mode="json")}
        try:
            self._ddb.put_item(TableName=self.name, Item=serialize(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(f"dataset {dataset.id} already exists", code="DATASET_EXISTS") from exc
            raise
        return dataset

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        resp = self._ddb.get_item(TableName=self.name, Key=serialize({"pk": f"DS#{dataset_id}", "sk": META}),
                                  ConsistentRead=True)
        item = resp.get("Item")
        return Dataset.model_validate(_strip(deserialize(item))) if item else None

    def get_dataset_for_owner(self, dataset_id: str, owner: str) -> Dataset:
        ds = self.get_dataset(dataset_id) if dataset_id.startswith("ds_") else None
        if ds is None or ds.owner != owner:
            raise NotFound(f"dataset {dataset_id} not found", code="DATASET_NOT_FOUND")
        return ds

    def save_dataset(self, dataset: Dataset, *, expected_version: int, expected_status: DatasetStatus) -> Dataset:
        """Conditional replace; a status change must be allowed by DATASET_TRANSITIONS."""
        if dataset.status != expected_status and dataset.status not in DATASET_TRANSITIONS[expected_status]:
            raise InvalidTransition(f"a dataset in '{expected_status}' cannot become '{dataset.status}'")
        updated = dataset.model_copy(update={"version": expected_version + 1, "updated_at": utcnow()})
        item = {"pk": f"DS#{updated.id}", "sk": META, "entity": "dataset", "gsi1pk": f"DSOWNER#{updated.owner}",
                "gsi1sk": f"{iso(updated.created_at)}#{updated.id}", **updated.model_dump(mode="json")}
        try:
            self._ddb.put_item(
                TableName=self.name, Item=serialize(item), ConditionExpression="#s = :s AND #v = :v",
                ExpressionAttributeNames={"#s": "status", "#v": "version"},
                ExpressionAttributeValues={":s": {"S": str(expected_status)}, ":v": serialize_value(expected_version)},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise InvalidTransition(f"dataset {dataset.id} changed concurrently", code="CONCURRENT_UPDATE") from exc
            raise
        return updated

    def list_datasets_by_owner(self, owner: str, *, limit: int = 20, cursor: str | None = None) -> Page:
        """Newest first, 1 query per page (datasets have their own gsi1 partition: job listings never mix them in)."""
        return self._index_page(Dataset, "gsi1", f"DSOWNER#{owner}", newest_first=True, limit=limit, cursor=cursor)

    # -- notification subscriptions -------------------------------------------------------------
    def get_email_subscription(self, owner: str, email: str) -> str | None:
        """1 read. The subscription ARN (or outcome) recorded for (owner, email), None if never subscribed."""
        resp = self._ddb.get_item(TableName=self.name, Key=serialize({"pk": f"NOTIFY#{owner}", "sk": f"EMAIL#{email}"}),
                                  ConsistentRead=True)
        item = resp.get("Item")
        return str(deserialize(item).get("subscription", "")) if item else None

    def put_email_subscription(self, owner: str, email: str, subscription: str) -> None:
        """1 write. Remembers that (owner, email) was subscribed (idempotent overwrite)."""
        item = {"pk": f"NOTIFY#{owner}", "sk": f"EMAIL#{email}", "entity": "email_subscription", "owner": owner,
                "email": email, "subscription": subscription, "created_at": iso(utcnow())}
        self._ddb.put_item(TableName=self.name, Item=serialize(item))

    # -- runs whose cost is still due ------------------------------------------------------------
    def put_pending_cost(self, job_id: str, runpod_job_id: str, endpoint_id: str) -> bool:
        """1 PutItem (conditional: a marker already there keeps its time). False when it was there already."""
        now = utcnow()
        created = iso(now)
        item = {**_pending_cost_key(job_id, runpod_job_id), "entity": "cost_pending",
                "gsi2pk": PENDING_COST_INDEX_PK, "gsi2sk": f"{created}#{job_id}#{runpod_job_id}",
                "job_id": job_id, "runpod_job_id": runpod_job_id, "endpoint_id": endpoint_id, "created_at": created,
                "expires_at": int(now.timestamp()) + PENDING_COST_TTL_SECONDS}
        try:
            self._ddb.put_item(TableName=self.name, Item=serialize(item), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def list_pending_costs(self, *, limit: int = 50, cursor: str | None = None) -> Page:
        """Oldest first. 1 Query on gsi2 (`STATUS#cost_pending`) per page; items are `PendingCost`."""
        params: dict[str, Any] = {
            "TableName": self.name, "IndexName": "gsi2", "KeyConditionExpression": "gsi2pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": PENDING_COST_INDEX_PK}}, "ScanIndexForward": True, "Limit": min(limit, MAX_PAGE),
        }
        start = decode_cursor(cursor, expected_keys={"pk", "sk", "gsi2pk", "gsi2sk"}, partition=("gsi2pk", PENDING_COST_INDEX_PK))
        if start:
            params["ExclusiveStartKey"] = start
        resp = self._ddb.query(**params)
        items = []
        for raw in resp.get("Items", []):
            item = deserialize(raw)
            items.append(PendingCost(job_id=item["job_id"], runpod_job_id=item["runpod_job_id"], endpoint_id=item["endpoint_id"],
                                     created_at=datetime.fromisoformat(item["created_at"])))
        return Page(items=items, next_cursor=encode_cursor(resp.get("LastEvaluatedKey")))

    def delete_pending_cost(self, job_id: str, runpod_job_id: str) -> None:
        """1 DeleteItem; idempotent."""
        self._ddb.delete_item(TableName=self.name, Key=serialize(_pending_cost_key(job_id, runpod_job_id)))

    # -- capacity --------------------------------------------------------------------------------
    def capacity_holders(self, owner: str | None = None) -> set[str]:
        pk = owner_capacity_pk(owner) if owner else GLOBAL_CAPACITY
        resp = self._ddb.get_item(TableName=self.name, Key=serialize({"pk": pk, "sk": META}), ConsistentRead=True)
        return set(deserialize(resp.get("Item", {})).get("holders", []))

    def release_leaked_slot(self, job_id: str, owner: str) -> None:
        """Reconcile: remove a job that is no longer active from both semaphores (idempotent)."""
        for pk in (GLOBAL_CAPACITY, owner_capacity_pk(owner)):
            self._ddb.update_item(TableName=self.name, Key=serialize({"pk": pk, "sk": META}),
                                  UpdateExpression="DELETE holders :job", ExpressionAttributeValues={":job": {"SS": [job_id]}})
