"""`loraforge drop PATH`: drop-to-train (DESIGN §1) — put a dataset under `incoming/<owner>/` and let the stack train it.

On the local stack the CLI writes to its S3 (moto) directly. On a deployed stack the drop zone is
plain S3 and needs AWS credentials, which the API client does not hold: the command prints the
`aws s3 cp` line to run instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .common import EXIT_NOT_SUCCEEDED, ApiClient, CliError, LocalState, api_options, command, print_json
from .datasets import ArchiveSource, dataset_name_for, print_dataset
from .jobs import watch

DROP_CONFIG = "loraforge.yaml"


def local_s3_client(state: LocalState) -> Any:
    import boto3  # the one place the CLI touches AWS directly, and only against the local stack
    from botocore.config import Config

    region = state.topic_arn.split(":")[3] if state.topic_arn.count(":") >= 5 else "us-east-1"
    return boto3.client(
        "s3", endpoint_url=state.aws_endpoint_url, region_name=region, aws_access_key_id="local", aws_secret_access_key="local",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def drop_keys(owner: str, path: Path, name: str) -> list[tuple[Path, str]]:
    """(file, key) pairs in upload order. A folder with a loraforge.yaml uploads in folder mode, the yaml last (it is the trigger)."""
    if path.is_dir() and (path / DROP_CONFIG).is_file():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink() and p.name != DROP_CONFIG)
        pairs = [(p, f"incoming/{owner}/{name}/{p.relative_to(path).as_posix()}") for p in files]
        return pairs + [(path / DROP_CONFIG, f"incoming/{owner}/{name}/{DROP_CONFIG}")]
    return [(path, f"incoming/{owner}/{name}.zip")]


def find_dropped_dataset(api: ApiClient, trigger_key: str, *, since: datetime, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    """The dataset ingest made from our upload: newest with this source key, created after the upload started."""
    deadline = time.monotonic() + timeout
    while True:
        for dataset in api.get("/v1/datasets", limit=20).get("items", []):
            created = _parse_time(dataset.get("created_at"))
            if dataset.get("source_key") == trigger_key and (created is None or created >= since):
                return dataset
        if time.monotonic() > deadline:
            raise CliError(f"no dataset appeared for s3 key {trigger_key} within {timeout:.0f} s "
                           "(a re-upload of an already trained key starts no second job)")
        time.sleep(interval)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def wait_for_job_id(api: ApiClient, dataset: dict[str, Any], *, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while dataset.get("status") not in ("ready", "invalid") or (dataset.get("status") == "ready" and not dataset.get("job_id")):
        if time.monotonic() > deadline:
            raise CliError(f"dataset {dataset.get('id')} is {dataset.get('status')} with no job after {timeout:.0f} s")
        time.sleep(interval)
        dataset = api.get(f"/v1/datasets/{dataset['id']}")
    return dataset


@command
def cmd_drop(args: argparse.Namespace, api: ApiClient) -> int:
    path = Path(args.path)
    owner = api.target.owner
    if not owner:
        raise CliError("cannot tell your owner id from the token; pass --user (local) or a JWT with a `sub` claim")
    name = args.name or dataset_name_for(path).replace(" ", "-")
    state = api.target.local
    if state is None:
        raise CliError("drop-to-train on a deployed stack is a plain S3 upload with your AWS credentials:\n"
                       f"  aws s3 cp {path} s3://<BucketName output>/incoming/{owner}/{name}.zip\n"
                       "then follow it with `loraforge datasets list` and `loraforge jobs watch <job id>`")
    if not path.exists():
        raise CliError(f"{path} does not exist")
    started = datetime.now(UTC) - timedelta(seconds=5)
    s3 = local_s3_client(state)
    if path.is_dir() and (path / DROP_CONFIG).is_file():
        pairs = drop_keys(owner, path, name)
        for file_path, key in pairs:
            s3.upload_file(str(file_path), state.bucket, key)
    else:
        with ArchiveSource(path) as source:
            pairs = drop_keys(owner, source.path, name)
            s3.upload_file(str(source.path), state.bucket, pairs[-1][1])
    trigger_key = pairs[-1][1]
    if not args.json:
        print(f"dropped s3://{state.bucket}/{trigger_key}")
    if not args.watch:
        if args.json:
            print_json({"bucket": state.bucket, "key": trigger_key})
        return 0
    dataset = wait_for_job_id(api, find_dropped_dataset(api, trigger_key, since=started, timeout=args.timeout), timeout=args.timeout)
    if dataset.get("status") == "invalid":
        if args.json:
            print_json({"dataset": dataset})
        else:
            print_dataset(dataset)
        return EXIT_NOT_SUCCEEDED
    if not args.json:
        print(f"dataset {dataset['id']} ready ({(dataset.get('stats') or {}).get('images')} images) → job {dataset['job_id']}", file=sys.stdout)
    return watch(api, dataset["job_id"], args)


def register(subparsers: argparse._SubParsersAction) -> None:
    drop = subparsers.add_parser("drop", parents=[api_options()], help="Drop-to-train: upload a zip or folder under incoming/<owner>/")
    drop.add_argument("path", help="A .zip, or a folder (with loraforge.yaml: folder mode, the yaml uploaded last; without: zipped)")
    drop.add_argument("--name", help="Name under incoming/<owner>/ (default: the file or folder name)")
    drop.add_argument("--watch", action="store_true", help="Wait for validation and follow the job it starts")
    drop.add_argument("--timeout", type=float, default=600.0, help="Seconds to wait for the dataset and the job")
    drop.add_argument("--interval", type=float, default=0.5, help="Seconds between polls")
    drop.set_defaults(func=cmd_drop)
