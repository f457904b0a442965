"""Cold path budget (issue 2): models + DAL + a DynamoDB client vs a bare boto3 + client process.

A benchmark, not a unit test: run with `make perf`. Prints both medians and asserts the ratio target.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

RUNS = 5
BARE = "import boto3; boto3.client('dynamodb', region_name='us-east-1')"
OURS = (
    "import loraforge.models, loraforge.dal.jobs_table, loraforge.dal.storage; "
    "from loraforge.dal.clients import client; client('dynamodb')"
)


def _median_seconds(code: str) -> float:
    env = os.environ | {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def test_models_and_dal_cold_start_within_one_and_a_half_bare_boto3():
    # Given warm OS caches (one throwaway run each)
    _median_seconds(BARE), _median_seconds(OURS)
    # When both processes are timed, median of 5
    bare, ours = _median_seconds(BARE), _median_seconds(OURS)
    ratio = ours / bare
    print(f"\ncold path: bare boto3+client {bare * 1000:.0f} ms, models+DAL+client {ours * 1000:.0f} ms, ratio {ratio:.2f} (target <= 1.5)")
    # Then ours stays within 1.5x
    assert ratio <= 1.5
