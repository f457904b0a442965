"""`loraforge local up` (the embedded local stack, until Ctrl-C) and `loraforge demo` (the whole main job, then exit).

The local stack's modules (moto, the emulator, the pumps) are imported only when one of these runs,
so the API commands stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .common import DEFAULT_STATE_DIR, EXIT_ERROR, EXIT_NOT_SUCCEEDED


def cmd_up(args: argparse.Namespace) -> int:
    from ..local.stack import LocalStack, LocalStackConfig

    users = tuple(u.strip() for u in args.users.split(",") if u.strip())
    if len(users) < 1:
        print("error: --users needs at least one name", file=sys.stderr)
        return EXIT_ERROR
    stack = LocalStack(LocalStackConfig(state_dir=Path(args.state_dir), port=args.port, workers=args.workers, users=users,
                                        poll_interval=args.poll_interval, reconcile_interval=args.reconcile_every))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Ctrl-C, `kill`, and a closed terminal (SIGHUP) all stop the stack the same clean way.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            info = stack.start()
        except Exception as exc:
            print(f"error: the local stack did not start: {type(exc).__name__}: {exc} (log: {stack.log_path})", file=sys.stderr)
            return EXIT_ERROR
        print(json.dumps(info, indent=2), flush=True)
        print(f"local stack up (state {stack.state_file}, log {stack.log_path}); Ctrl-C stops it.\n"
              f"try: loraforge presets   |   loraforge datasets upload DIR   |   loraforge drop ZIP --watch", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping…", file=sys.stderr, flush=True)
    finally:
        # Stop even on an unexpected error, and ignore a second Ctrl-C while the workers are ended.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Everything is stopped, closed and flushed; tearing down moto's in-memory state object by object at
    # interpreter exit takes seconds after a busy session and does nothing useful.
    os._exit(0)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..local.demo import run_demo

    try:
        # With --json the progress and summary go to stderr and one JSON document to stdout.
        result = run_demo(Path(args.output), workers=args.workers, state_dir=Path(args.state_dir), out=sys.stderr if args.json else sys.stdout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: the demo failed: {type(exc).__name__}: {exc} (log: {Path(args.state_dir) / 'logs' / 'stack.log'})", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(result.summary(), indent=2, default=str))
    if result.job.get("status") != "succeeded" or result.lora_path is None:
        return EXIT_NOT_SUCCEEDED
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser("local", help="The embedded local stack (no cloud account needed)")
    sub = local.add_subparsers(dest="local_command", required=True)
    up = sub.add_parser("up", help="Start moto, the RunPod emulator + workers, the event pumps and the API on 127.0.0.1 until Ctrl-C")
    up.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    up.add_argument("--workers", type=int, default=1, help="RunPod worker processes (default 1)")
    up.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"Where local.json and logs/ go (default {DEFAULT_STATE_DIR})")
    up.add_argument("--users", default="alice,bob", help="Comma-separated local users; each gets a bearer token (default alice,bob)")
    up.add_argument("--poll-interval", type=float, default=0.2, help="Event pump poll interval in seconds (default 0.2)")
    up.add_argument("--reconcile-every", type=float, default=5.0, help="Seconds between reconcile runs (AWS: the template's rate)")
    up.set_defaults(func=cmd_up)

    demo = subparsers.add_parser("demo", help="Run the whole main job locally: drop a dataset, train a LoRA, download it")
    demo.add_argument("-o", "--output", default="loraforge-demo", help="Folder for the dataset, the LoRA and the loss curve")
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    demo.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout (progress goes to stderr)")
    demo.set_defaults(func=cmd_demo)
