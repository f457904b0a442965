"""`loraforge datasets upload|list|show`."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from .common import EXIT_NOT_SUCCEEDED, ApiClient, CliError, api_options, command, print_json, table

DATASET_DONE = {"ready", "invalid"}


def dataset_name_for(path: Path) -> str:
    """A valid dataset name (letters, digits, space . _ -) from a file or folder name."""
    stem = path.name[:-4] if path.name.lower().endswith(".zip") else path.name
    cleaned = re.sub(r"[^A-Za-z0-9 ._-]+", "-", stem).strip(" .-_") or "dataset"
    if not cleaned[0].isalnum():
        cleaned = "d" + cleaned
    return cleaned[:100]


def zip_folder(folder: Path, dest: Path) -> int:
    """Zips a folder's regular files (symlinks are skipped: the archive holds what is really there). Returns the file count."""
    count = 0
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    print(f"skipping {path} (not a regular file)", file=sys.stderr)
                    continue
                archive.write(path, path.relative_to(folder).as_posix())
                count += 1
    if count == 0:
        raise CliError(f"{folder} has no files to upload")
    return count


class ArchiveSource:
    """A zip to upload: the given file, or a temporary zip of the given folder."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise CliError(f"{path} does not exist")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path.is_dir():
            self._tmp = tempfile.TemporaryDirectory(prefix="loraforge-")
            self.path = Path(self._tmp.name) / (dataset_name_for(path).replace(" ", "-") + ".zip")
            zip_folder(path, self.path)
        elif zipfile.is_zipfile(path):
            self.path = path
        else:
            raise CliError(f"{path} is neither a folder nor a zip archive")

    def __enter__(self) -> ArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def upload_presigned_post(upload: dict[str, Any], file_path: Path) -> None:
    """S3 presigned POST: the policy fields first, the file last (httpx multipart puts `files` after `data`)."""
    try:
        with file_path.open("rb") as fh:
            response = httpx.post(upload["url"], data=upload["fields"], files={"file": (file_path.name, fh, "application/zip")},
                                  timeout=httpx.Timeout(600.0, connect=5.0))
    except httpx.HTTPError as exc:
        raise CliError(f"upload failed: {exc}") from exc
    if response.status_code not in (200, 201, 204):
        code = re.search(r"<Code>(.*?)</Code>", response.text)
        message = re.search(r"<Message>(.*?)</Message>", response.text)
        detail = f"{code.group(1) if code else ''} {message.group(1) if message else ''}".strip()
        raise CliError(f"upload refused by storage: HTTP {response.status_code} {detail}".rstrip())


def wait_for_dataset(api: ApiClient, dataset_id: str, *, timeout: float, interval: float = 0.5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        dataset = api.get(f"/v1/datasets/{dataset_id}")
        if dataset.get("status") in DATASET_DONE:
            return dataset
        if time.monotonic() > deadline:
            raise CliError(f"dataset {dataset_id} still {dataset.get('status')} after {timeout:.0f} s")
        time.sleep(interval)


def print_dataset(dataset: dict[str, Any]) -> None:
    stats = dataset.get("stats") or {}
    print(f"dataset {dataset.get('id')} ({dataset.get('name')}): {dataset.get('status')}")
    print(f"  images {stats.get('images', 0)}, rejected {stats.get('rejected', 0)}, {stats.get('total_bytes', 0)} bytes, "
          f"sides {stats.get('min_side')}–{stats.get('max_side')}, captioned {stats.get('captioned', 0)}")
    if dataset.get("job_id"):
        print(f"  job    {dataset['job_id']}")
    for error in dataset.get("errors") or []:
        print(f"  error  {error.get('code')}: {error.get('message')}")
    for warning in dataset.get("warnings") or []:
        print(f"  warning {warning}")
    rejected = dataset.get("rejected_sample") or dataset.get("rejected") or []
    if rejected:
        print("  rejected:")
        for item in rejected:
            print(f"    {item.get('key')}: {item.get('reason')} — {item.get('message')}")


@command
def cmd_upload(args: argparse.Namespace, api: ApiClient) -> int:
    path = Path(args.path)
    with ArchiveSource(path) as source:
        name = args.name or dataset_name_for(path)
        created = api.post("/v1/datasets", {"name": name, "kind": args.kind})
        dataset_id = created["id"]
        if not args.json:
            print(f"dataset {dataset_id}: uploading {source.path.stat().st_size} bytes")
        upload_presigned_post(created["upload"], source.path)
    if args.no_wait:
        result = api.get(f"/v1/datasets/{dataset_id}")
    else:
        if not args.json:
            print("validating…")
        result = wait_for_dataset(api, dataset_id, timeout=args.timeout)
    if args.json:
        print_json(result)
    else:
        print_dataset(result)
    return EXIT_NOT_SUCCEEDED if result.get("status") == "invalid" else 0


@command
def cmd_list(args: argparse.Namespace, api: ApiClient) -> int:
    items = list(api.paginate("/v1/datasets", limit=args.limit)) if args.all else api.get("/v1/datasets", limit=args.limit).get("items", [])
    if args.json:
        print_json({"items": items})
        return 0
    rows = [[d.get("id"), d.get("status"), (d.get("stats") or {}).get("images"), d.get("name"), d.get("created_at"), d.get("job_id")] for d in items]
    print(table(rows, ["ID", "STATUS", "IMAGES", "NAME", "CREATED", "JOB"]))
    return 0


@command
def cmd_show(args: argparse.Namespace, api: ApiClient) -> int:
    dataset = api.get(f"/v1/datasets/{args.dataset_id}")
    if args.json:
        print_json(dataset)
    else:
        print_dataset(dataset)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parent = api_options()
    datasets = subparsers.add_parser("datasets", help="Upload and inspect datasets")
    sub = datasets.add_subparsers(dest="datasets_command", required=True)
    upload = sub.add_parser("upload", parents=[parent], help="Zip a folder (or take a zip), upload it, wait for validation")
    upload.add_argument("path", help="A folder of images + same-name .txt captions, or a .zip")
    upload.add_argument("--name", help="Dataset name (default: the folder or zip name)")
    upload.add_argument("--kind", default="images", choices=["images", "video"])
    upload.add_argument("--no-wait", action="store_true", help="Do not wait for validation")
    upload.add_argument("--timeout", type=float, default=600.0, help="Seconds to wait for validation")
    upload.set_defaults(func=cmd_upload)
    listing = sub.add_parser("list", parents=[parent], help="Your datasets, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--all", action="store_true", help="Follow the cursor through every page")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", parents=[parent], help="One dataset: status, stats, rejected items")
    show.add_argument("dataset_id")
    show.set_defaults(func=cmd_show)

