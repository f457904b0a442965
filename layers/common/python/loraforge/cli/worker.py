"""`loraforge worker render-config`: print the exact engine config the worker would run for a preset.

    loraforge worker render-config --preset flux-dev --param steps=1500 --param rank=32 --trigger-word ohwx

For ai-toolkit presets this is the AI-Toolkit YAML (`python run.py <file>`); for diffusers presets the
JSON of the CPU/GPU diffusers trainer. It is built by the worker's own code (`loraforge_worker.engines`)
from the same TrainingSpec dispatch sends, so what you see is what trains. Folder paths are those of
one run on this machine (the worker uses a fresh folder per attempt).
"""

from __future__ import annotations

import argparse
import sys

from ..models.errors import LoraforgeError
from .common import parse_param


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser("worker", help="Worker-image tools (engine configs)")
    worker_sub = worker.add_subparsers(dest="worker_command", required=True)
    render = worker_sub.add_parser("render-config", help="Print the engine config the worker would run for a preset")
    render.add_argument("--preset", required=True, help="Preset id (see `loraforge presets`)")
    render.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                        help="Hyperparameter override, e.g. steps=1500 learning_rate=2e-4 (repeatable)")
    render.add_argument("--trigger-word", help="Trigger word (replaces [trigger] in captions and sample prompts)")
    render.add_argument("--sample-prompt", action="append", default=[], help="Sample prompt (repeatable; default: the preset's)")
    render.add_argument("--checkpoint-every", type=int, help="Steps between checkpoints")
    render.add_argument("--sample-every", type=int, help="Steps between samples")
    render.add_argument("--keep", type=int, help="Checkpoints to keep")
    render.add_argument("--job-id", default="job_preview", help="Job id the run is named after (default job_preview)")
    render.set_defaults(func=render_config)


def render_config(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loraforge_worker.engines import get_engine
    from loraforge_worker.engines.base import RunLayout, run_name
    from loraforge_worker.runtime import WorkerRuntime

    from ..models.job import CheckpointOptions, SampleOptions
    from ..presets import build_training_spec, get_preset, resolve_hyperparameters

    try:
        preset = get_preset(args.preset)
        hyperparameters = resolve_hyperparameters(preset, dict(args.param))
        samples = SampleOptions(prompts=args.sample_prompt, every=args.sample_every)
        checkpoints = CheckpointOptions(every=args.checkpoint_every, **({"keep": args.keep} if args.keep is not None else {}))
        spec = build_training_spec(preset, hyperparameters, trigger_word=args.trigger_word, samples=samples, checkpoints=checkpoints)
        name = run_name(args.job_id)
        layout = RunLayout(root=WorkerRuntime().work_root / f"{name}-a1", name=name)
        text = get_engine(preset.engine).render_spec(spec, layout)
    except LoraforgeError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (ValidationError, ValueError) as exc:
        print(f"INVALID_INPUT: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
