"""`loraforge` entry point. Each command group lives in its own module exposing
`register(subparsers)`; add new groups to COMMAND_MODULES."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "loraforge.cli.local",
    "loraforge.cli.presets",
    "loraforge.cli.datasets",
    "loraforge.cli.jobs",
    "loraforge.cli.drop",
    "loraforge.cli.worker",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraforge", description="Serverless LoRA training: local stack, API client, worker tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
