"""`loraforge jobs create|list|show|watch|cancel|retry|download|metrics`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_NOT_SUCCEEDED, ApiClient, CliError, api_options, command, download_url, print_json, table
from .presets import job_body, job_options
from .progress import Watcher, artifact_rows, format_bytes, job_summary_lines, list_artifacts


def print_job(job: dict[str, Any]) -> None:
    for line in job_summary_lines(job):
        print(line)
    print(f"  preset     {job.get('preset')}   dataset {job.get('dataset_id')}   attempt {job.get('attempts')}")
    for key in ("created_at", "started_at", "finished_at"):
        if job.get(key):
            print(f"  {key:<11}{job[key]}")
    result = job.get("result") or {}
    files = result.get("files") or ([result["lora"]] if result.get("lora") else [])
    for file in files:  # a LoRA saved as one file per expert (Wan 2.2 14B) has a line per file, naming its expert
        part = f", {file['part']}" if file.get("part") else ""
        print(f"  lora       {file.get('key')} ({format_bytes(file.get('size'))}{part})")


def watch(api: ApiClient, job_id: str, args: argparse.Namespace) -> int:
    """Follows a job to its end; prints the bar (unless --json), the summary and the artifacts."""
    job = Watcher(api, job_id, interval=args.interval, show_events=not args.json, out=sys.stdout if not args.json else _Silent()).run(
        timeout=args.timeout
    )
    artifacts = list_artifacts(api, job_id)
    if args.json:
        print_json({"job": job, "artifacts": artifacts})
    else:
        for line in job_summary_lines(job):
            print(line)
        if artifacts:
            print(artifact_rows(artifacts))
    return 0 if job.get("status") == "succeeded" else EXIT_NOT_SUCCEEDED


class _Silent:
    """Output sink for --json watches (only the final document is printed)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


@command
def cmd_create(args: argparse.Namespace, api: ApiClient) -> int:
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    job = api.post("/v1/jobs", job_body(args), headers=headers)
    return _show_or_watch(api, job, args, f"job {job['id']} created")


@command
def cmd_list(args: argparse.Namespace, api: ApiClient) -> int:
    params = {"status": args.status, "limit": args.limit}
    items = list(api.paginate("/v1/jobs", **params)) if args.all else api.get("/v1/jobs", **params).get("items", [])
    if args.json:
        print_json({"items": items})
        return 0
    rows = []
    for job in items:
        progress = job.get("progress") or {}
        rows.append([job.get("id"), job.get("status"), job.get("preset"), f"{progress.get('step', 0)}/{progress.get('total_steps', 0)}",
                     job.get("created_at"), job.get("name") or ""])
    print(table(rows, ["ID", "STATUS", "PRESET", "STEPS", "CREATED", "NAME"]))
    return 0


@command
def cmd_show(args: argparse.Namespace, api: ApiClient) -> int:
    job = api.get(f"/v1/jobs/{args.job_id}")
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return 0


@command
def cmd_watch(args: argparse.Namespace, api: ApiClient) -> int:
    return watch(api, args.job_id, args)


@command
def cmd_cancel(args: argparse.Namespace, api: ApiClient) -> int:
    job = api.post(f"/v1/jobs/{args.job_id}/cancel", {"keep_latest": args.keep_latest})
    if args.json:
        print_json(job)
    else:
        print(f"job {job.get('id')}: {job.get('status')}")
    return 0


@command
def cmd_retry(args: argparse.Namespace, api: ApiClient) -> int:
    job = api.post(f"/v1/jobs/{args.job_id}/retry", {})
    return _show_or_watch(api, job, args, f"job {job['id']}: attempt {job.get('attempts')} queued")


def _show_or_watch(api: ApiClient, job: dict, args: argparse.Namespace, headline: str) -> int:
    """A job the command just made: follow it with --watch, else print it (JSON with --json)."""
    if args.watch:
        if not args.json:
            print(headline)
        return watch(api, job["id"], args)
    if args.json:
        print_json(job)
    else:
        print_job(job)
    return 0


def _newest_step(artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every file of the newest step (a Wan 2.2 14B checkpoint or final LoRA is one file per expert)."""
    newest = max((a.get("step") or 0) for a in artifacts)
    return [a for a in artifacts if (a.get("step") or 0) == newest]


def result_artifacts(job: dict[str, Any], artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every file of the job's LoRA (`result.files`), as the artifacts route lists them (with presigned URLs).

    A job finished before `result.files` existed: every final file of its newest step, else the one `result.lora`."""
    by_key = {a.get("key"): a for a in artifacts}
    result = job.get("result") or {}
    wanted = result.get("files") or []
    if wanted:
        missing = [f.get("name") or f.get("key") for f in wanted if f.get("key") not in by_key]
        if missing:
            raise CliError(f"{', '.join(str(m) for m in missing)} of the job's LoRA is no longer stored; nothing was downloaded")
        return [by_key[f["key"]] for f in wanted]
    finals = [a for a in artifacts if a.get("kind") == "final"]
    if finals:
        return _newest_step(finals)
    lora = result.get("lora") or {}
    if lora.get("key") in by_key:
        return [by_key[lora["key"]]]
    raise CliError("the job has no final LoRA (yet); use --checkpoint STEP or --all")


def select_artifacts(artifacts: list[dict[str, Any]], *, checkpoint: str | None, everything: bool,
                     job: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`--all`: everything; `--checkpoint STEP|latest`: every file of that checkpoint; default: every file of the job's LoRA."""
    if everything:
        return artifacts
    if checkpoint is not None:
        checkpoints = [a for a in artifacts if a.get("kind") == "checkpoint"]
        if not checkpoints:
            raise CliError("the job has no checkpoints")
        if checkpoint == "latest":
            return _newest_step(checkpoints)
        try:
            step = int(checkpoint)
        except ValueError as exc:
            raise CliError(f"--checkpoint takes a step number or 'latest', not {checkpoint!r}") from exc
        chosen = [a for a in checkpoints if a.get("step") == step]
        if not chosen:
            raise CliError(f"no checkpoint at step {step}; stored steps: {', '.join(str(a.get('step')) for a in checkpoints)}")
        return chosen
    return result_artifacts(job or {}, artifacts)


def _plain_file_name(artifact: dict[str, Any]) -> str:
    """The artifact's file name as one plain path segment: the recorded `name` comes from a worker event and is not checked
    against the key, so a name with '/' or '..' must never place a file outside the output folder."""
    for candidate in (artifact.get("name"), artifact.get("key")):
        segment = str(candidate or "").replace("\\", "/").rsplit("/", 1)[-1]
        if segment not in ("", ".", ".."):
            return segment
    raise CliError(f"artifact {artifact.get('key')!r} has no usable file name")


@command
def cmd_download(args: argparse.Namespace, api: ApiClient) -> int:
    job = api.get(f"/v1/jobs/{args.job_id}") if args.checkpoint is None and not args.all else None
    chosen = select_artifacts(list_artifacts(api, args.job_id), checkpoint=args.checkpoint, everything=args.all, job=job)
    parts = {f.get("key"): f.get("part") for f in ((job or {}).get("result") or {}).get("files") or []}
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for artifact in chosen:
        name = _plain_file_name(artifact)
        if artifact.get("kind") in ("sample", "log", "config", "metrics") and args.all:
            dest_dir = out_dir / str(artifact["kind"])
            dest_dir.mkdir(exist_ok=True)
        else:
            dest_dir = out_dir
        dest = dest_dir / name
        size = download_url(artifact["url"], dest, expected_sha256=artifact.get("sha256"))
        part = parts.get(artifact.get("key"))
        written.append({"path": str(dest), "size": size, "kind": artifact.get("kind"), "step": artifact.get("step"), "key": artifact.get("key")}
                       | ({"part": part} if part else {}))
        if not args.json:
            expert = f", {part}" if part else ""
            print(f"{dest}  ({format_bytes(size)}, {artifact.get('kind')} step {artifact.get('step')}{expert}, sha256 verified)")
    if args.json:
        print_json({"files": written})
    return 0


@command
def cmd_metrics(args: argparse.Namespace, api: ApiClient) -> int:
    metrics = api.get(f"/v1/jobs/{args.job_id}/metrics")
    if args.json:
        print_json(metrics)
        return 0
    items = metrics.get("items", []) if isinstance(metrics, dict) else metrics
    print(table([[m.get("step"), m.get("loss"), m.get("lr")] for m in items], ["STEP", "LOSS", "LR"]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parent = api_options()
    jobs = subparsers.add_parser("jobs", help="Create, follow, cancel, retry and download training jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)

    def watch_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--interval", type=float, default=0.5, help="Seconds between polls")
        parser.add_argument("--timeout", type=float, default=None, help="Give up after this many seconds")

    create = sub.add_parser("create", parents=[parent], help="Queue a training job on a ready dataset")
    job_options(create, dataset_required=True)
    create.add_argument("--idempotency-key", help="Same key + same body returns the same job")
    create.add_argument("--watch", action="store_true", help="Follow the job after creating it")
    watch_flags(create)
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", parents=[parent], help="Your jobs, newest first")
    listing.add_argument("--status", help="Only jobs in this status")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--all", action="store_true", help="Follow the cursor through every page")
    listing.set_defaults(func=cmd_list)

    for name, func, text in (("show", cmd_show, "One job"), ("metrics", cmd_metrics, "Loss and learning rate by step")):
        parser = sub.add_parser(name, parents=[parent], help=text)
        parser.add_argument("job_id")
        parser.set_defaults(func=func)

    watch_parser = sub.add_parser("watch", parents=[parent], help="Live progress bar until the job ends, then its artifacts")
    watch_parser.add_argument("job_id")
    watch_flags(watch_parser)
    watch_parser.set_defaults(func=cmd_watch)

    cancel = sub.add_parser("cancel", parents=[parent], help="Cancel a job")
    cancel.add_argument("job_id")
    cancel.add_argument("--keep-latest", action="store_true", help="Keep the newest checkpoint as the result")
    cancel.set_defaults(func=cmd_cancel)

    retry = sub.add_parser("retry", parents=[parent], help="New attempt of a failed or cancelled job, from its last checkpoint")
    retry.add_argument("job_id")
    retry.add_argument("--watch", action="store_true", help="Follow the new attempt")
    watch_flags(retry)
    retry.set_defaults(func=cmd_retry)

    download = sub.add_parser("download", parents=[parent],
                              help="Download the job's LoRA, every file of it (or a checkpoint, or everything)")
    download.add_argument("job_id")
    download.add_argument("--checkpoint", metavar="STEP", help="A checkpoint step (or 'latest') instead of the LoRA: every file of that step")
    download.add_argument("--all", action="store_true", help="Every artifact: checkpoints, samples, logs, config, metrics")
    download.add_argument("-o", "--output", default=".", help="Folder to write to (default: the current one)")
    download.set_defaults(func=cmd_download)
