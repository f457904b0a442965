"""S3 storage adapter: the worker's presigned POST can write only its own job's prefix (issue 2)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from loraforge.dal import keys
from loraforge.dal.storage import Storage


def decode_policy(post: dict) -> dict:
    return json.loads(base64.b64decode(post["fields"]["policy"]))


def key_conditions(policy: dict) -> list[list]:
    return [c for c in policy["conditions"] if isinstance(c, list) and c[1] == "$key"]


def test_job_output_policy_cannot_match_a_key_outside_the_job_prefix(aws_stack):
    # Given the presigned POST for job J of alice
    post = Storage().job_output_post("alice", "job_j", ttl_seconds=600)
    policy = decode_policy(post)
    prefix = keys.job_prefix("alice", "job_j")
    # Then every key condition is a starts-with on exactly jobs/alice/job_j/ (ending in '/', so job_j2 cannot match)
    conds = key_conditions(policy)
    assert conds and all(c[0] == "starts-with" and c[2] == prefix for c in conds)
    assert prefix.endswith("/")
    # and the size has an upper bound
    ranges = [c for c in policy["conditions"] if isinstance(c, list) and c[0] == "content-length-range"]
    assert ranges == [["content-length-range", 1, ranges[0][2]]] and ranges[0][2] > 0


@pytest.mark.parametrize("key", ["jobs/alice/job_j2/x", "jobs/alice/other/x", "datasets/alice/x", "jobs/bob/job_j/x"])
def test_the_policy_is_enforced_for_keys_outside_the_prefix(aws_stack, key):
    # Given the worker's POST policy / When it tries another prefix / Then S3 refuses and nothing is written
    post = Storage().job_output_post("alice", "job_j", ttl_seconds=600)
    fields = post["fields"] | {"key": key}
    resp = httpx.post(post["url"], data=fields, files={"file": ("x", b"data")})
    assert resp.status_code in (400, 403), resp.text
    assert Storage().head(key) is None


def test_the_policy_lets_the_worker_write_inside_its_prefix(aws_stack):
    post = Storage().job_output_post("alice", "job_j", ttl_seconds=600)
    key = keys.job_artifact_key("alice", "job_j", "checkpoint", "a.safetensors")
    resp = httpx.post(post["url"], data=post["fields"] | {"key": key}, files={"file": ("a.safetensors", b"weights")})
    assert resp.status_code in (200, 201, 204), resp.text
    assert Storage().head(key)["ContentLength"] == 7


def test_dataset_upload_policy_pins_the_archive_key(aws_stack):
    post = Storage().dataset_upload_post("alice", "ds_x")
    conds = key_conditions(decode_policy(post))
    assert ["eq", "$key", keys.dataset_archive_key("alice", "ds_x")] in conds
    assert all(c[0] == "eq" for c in conds)


def test_presigned_get_expires(aws_stack):
    Storage().put_bytes("jobs/alice/job_j/final/lora.safetensors", b"abc")
    url, expires_at = Storage().presigned_get("jobs/alice/job_j/final/lora.safetensors", ttl_seconds=120)
    assert httpx.get(url).content == b"abc"
    assert "X-Amz-Expires=120" in url and expires_at
