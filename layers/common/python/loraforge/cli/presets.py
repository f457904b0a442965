"""`loraforge presets` and `loraforge estimate`."""

from __future__ import annotations

import argparse
from typing import Any

from .common import ApiClient, api_options, command, parse_param, print_json, table


def job_options(parser: argparse.ArgumentParser, *, dataset_required: bool) -> None:
    """The job body flags shared by `estimate` and `jobs create` (the API validates both the same way)."""
    parser.add_argument("--dataset", dest="dataset_id", required=dataset_required, help="Dataset id (ds_…)")
    parser.add_argument("--preset", default="tiny-sd", help="Preset id (`loraforge presets`; default tiny-sd)")
    parser.add_argument("--name", help="A name for the job")
    parser.add_argument("--trigger-word", help="Replaces [trigger] in captions and sample prompts")
    parser.add_argument("--steps", type=int, help="Training steps (shortcut for --param steps=N)")
    parser.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                        help="Hyperparameter override, e.g. learning_rate=1e-4 rank=16 (repeatable)")
    parser.add_argument("--sample-prompt", action="append", default=[], help="Sample prompt (repeatable)")
    parser.add_argument("--sample-every", type=int, help="Steps between samples")
    parser.add_argument("--checkpoint-every", type=int, help="Steps between checkpoints")
    parser.add_argument("--keep", type=int, help="How many checkpoints to keep")
    parser.add_argument("--webhook-url", help="Signed webhook for job state changes")
    parser.add_argument("--email", help="Email address notified on success/failure")


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    hyperparameters = dict(args.param)
    if args.steps is not None:
        hyperparameters["steps"] = args.steps
    body: dict[str, Any] = {"preset": args.preset, "hyperparameters": hyperparameters}
    if args.dataset_id:
        body["dataset_id"] = args.dataset_id
    if args.name:
        body["name"] = args.name
    if args.trigger_word:
        body["trigger_word"] = args.trigger_word
    samples = {k: v for k, v in {"prompts": args.sample_prompt or None, "every": args.sample_every}.items() if v is not None}
    if samples:
        body["samples"] = samples
    checkpoints = {k: v for k, v in {"every": args.checkpoint_every, "keep": args.keep}.items() if v is not None}
    if checkpoints:
        body["checkpoints"] = checkpoints
    notify = {k: v for k, v in {"webhook_url": args.webhook_url, "email": args.email}.items() if v is not None}
    if notify:
        body["notify"] = notify
    return body


@command
def cmd_presets(args: argparse.Namespace, api: ApiClient) -> int:
    page = api.get("/v1/presets")
    items = page.get("items", []) if isinstance(page, dict) else page
    if args.json:
        print_json(page)
        return 0
    rows = []
    for preset in items:
        defaults = preset.get("defaults") or {}
        rows.append([preset.get("id"), preset.get("family"), preset.get("engine"), preset.get("gpu_class"),
                     preset.get("min_vram_gb"), defaults.get("steps"), preset.get("name")])
    print(table(rows, ["ID", "FAMILY", "ENGINE", "GPU", "VRAM GB", "STEPS", "NAME"]))
    return 0


@command
def cmd_estimate(args: argparse.Namespace, api: ApiClient) -> int:
    estimate = api.post("/v1/estimates", job_body(args))
    if args.json:
        print_json(estimate)
        return 0
    print(f"{'preset':<22}{args.preset}")
    for key in ("seconds", "cost_usd", "vram_gb", "gpu_class", "gpu_price_per_second"):
        if key in estimate:
            print(f"{key:<22}{estimate[key]}")
    for warning in estimate.get("warnings") or []:
        print(f"{'warning':<22}{warning}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parent = api_options()
    presets = subparsers.add_parser("presets", parents=[parent], help="List training presets")
    presets.set_defaults(func=cmd_presets)
    estimate = subparsers.add_parser("estimate", parents=[parent], help="Dry run: time, cost, VRAM and warnings for a job")
    job_options(estimate, dataset_required=False)
    estimate.set_defaults(func=cmd_estimate)
