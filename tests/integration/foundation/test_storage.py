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


def policy_allows(policy: dict, key: str, size: int) -> bool:
    """S3's POST-policy rules for the conditions we issue (eq, starts-with, content-length-range).

    moto accepts any POST without checking the policy, so the policy itself is evaluated here, as S3 does.
    """
    for cond in policy["conditions"]:
        if isinstance(cond, dict):
            continue
        op = cond[0]
        if op == "content-length-range" and not cond[1] <= size <= cond[2]:
            return False
        if op == "eq" and cond[1] == "$key" and key != cond[2]:
            return False
        if op == "starts-with" and cond[1] == "$key" and not key.startswith(cond[2]):
            return False
    return True


@pytest.mark.parametrize(
    "key",
    ["jobs/alice/job_j2/x", "jobs/alice/other/x", "datasets/alice/x", "jobs/bob/job_j/x", "jobs/alice/job_j", "incoming/alice/x.zip"],
)
def test_no_key_outside_the_job_prefix_satisfies_the_policy(aws_stack, key):
    # Given the worker's POST policy / When a key outside its prefix is tried / Then the policy refuses it
    policy = decode_policy(Storage().job_output_post("alice", "job_j", ttl_seconds=600))
    assert not policy_allows(policy, key, size=10)
    assert policy_allows(policy, "jobs/alice/job_j/checkpoints/a.safetensors", size=10)


def test_the_policy_bounds_the_upload_size(aws_stack):
    policy = decode_policy(Storage().job_output_post("alice", "job_j", ttl_seconds=600))
    inside = "jobs/alice/job_j/final/lora.safetensors"
    assert not policy_allows(policy, inside, size=0)
    assert not policy_allows(policy, inside, size=64 * 1024**3)


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
