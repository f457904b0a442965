"""The AI-Toolkit output parser on recorded-style streams (reference/ai-toolkit.md §2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraforge.contract import WorkerErrorCode
from loraforge_worker.engines.output_parser import (
    CheckpointSaved,
    EngineError,
    LineSplitter,
    LogLine,
    OomSkipped,
    OptimizerSaved,
    OutputParser,
    Progress,
    Resumed,
    Stopped,
)


def parse(stream: bytes, name: str = "my_lora", chunk: int = 7) -> tuple[OutputParser, list[object]]:
    """Feed the bytes in small chunks, as a pipe delivers them, and interpret every line."""
    parser, splitter, out = OutputParser(name), LineSplitter(), []
    for i in range(0, len(stream), chunk):
        for line in splitter.feed(stream[i:i + chunk]):
            out.extend(parser.interpret(line))
    for line in splitter.flush():
        out.extend(parser.interpret(line))
    return parser, out


def of(kind: type, signals: list[object]) -> list:
    return [s for s in signals if isinstance(s, kind)]


def test_carriage_return_bar_updates_become_progress_with_step_total_loss_lr_and_eta():
    # Given tqdm redrawing its bar with \r and no newline (UTF-8 blocks, it/s)
    stream = (
        "my_lora:   0%|          | 0/12 [00:00<?, ?it/s]"
        "\rmy_lora:  58%|█████▊    | 7/12 [00:23<00:04,  1.11it/s, lr: 1.0e-04 loss: 1.091e+00]"
        "\rmy_lora:  67%|██████▋   | 8/12 [00:24<00:03,  1.12it/s, lr: 1.0e-04 loss: 9.800e-01]"
    ).encode()

    # When parsed
    _, signals = parse(stream)

    # Then each redraw is a progress signal
    progress = of(Progress, signals)
    assert [(p.step, p.total) for p in progress] == [(0, 12), (7, 12), (8, 12)]
    assert progress[1].loss == pytest.approx(1.091) and progress[1].lr == pytest.approx(1e-4)
    assert progress[1].eta_seconds == 4 and progress[1].seconds_per_step == pytest.approx(1 / 1.11)
    assert progress[0].loss is None and progress[0].eta_seconds is None


def test_hash_bars_and_seconds_per_iteration_are_understood():
    # Given a non-UTF-8 stream (# blocks) on a slow GPU (s/it) and an hour-long ETA
    stream = b"\rmy_lora:  10%|#         | 100/1000 [05:00<1:15:00,  3.05s/it, lr: 4.0e-04 loss: 2.5e-01]"

    _, signals = parse(stream)

    (progress,) = of(Progress, signals)
    assert (progress.step, progress.total) == (100, 1000)
    assert progress.seconds_per_step == pytest.approx(3.05)
    assert progress.eta_seconds == 4500
    assert progress.loss == pytest.approx(0.25)


def test_bars_of_other_tasks_are_not_training_progress():
    # Given download and sampling bars mixed into the stream
    stream = (b"Generating Images:  50%|#####     | 1/2 [00:01<00:01]\n"
              b"model.safetensors:  30%|###       | 3.00G/10.0G [00:10<00:23]\r"
              b"my_lora_2: 10%|#| 1/10 [00:01<00:09]\n")

    _, signals = parse(stream)

    assert of(Progress, signals) == []


def test_save_lines_give_step_checkpoints_the_final_file_and_the_optimizer():
    stream = (
        b"\nSaving at step 250\n"
        b"Saved checkpoint to /w/output/my_lora/my_lora_000000250.safetensors\n"
        b"Saved optimizer to /w/output/my_lora/optimizer.pt\n"
        b"Removing old save: /w/output/my_lora/my_lora_000000050.safetensors\n"
        b"Saved checkpoint to /w/output/my_lora/my_lora.safetensors\n"
    )

    _, signals = parse(stream)

    assert of(CheckpointSaved, signals) == [
        CheckpointSaved(Path("/w/output/my_lora/my_lora_000000250.safetensors"), 250),
        CheckpointSaved(Path("/w/output/my_lora/my_lora.safetensors"), None),
    ]
    assert of(OptimizerSaved, signals) == [OptimizerSaved(Path("/w/output/my_lora/optimizer.pt"))]
    assert any("Removing old save" in line.text for line in of(LogLine, signals))


def test_split_wan22_checkpoint_names_keep_their_step():
    _, signals = parse(b"Saved checkpoint to /o/my_lora/my_lora_000000500_high_noise.safetensors\n")
    assert of(CheckpointSaved, signals)[0].step == 500


def test_oom_box_is_a_warning_and_its_abort_a_user_gpu_oom():
    stream = (
        b"################################################\n"
        b"# OOM during training step, skipping batch 1/3 #\n"
        b"################################################\n"
        b"# OOM during training step, skipping batch 2/3 #\n"
        b"Error running job: OOM during training step 3 times in a row, aborting training\n"
    )

    parser, signals = parse(stream)

    assert of(OomSkipped, signals) == [OomSkipped(1, 3), OomSkipped(2, 3)]
    errors = of(EngineError, signals)
    assert errors and all(e.code == WorkerErrorCode.GPU_OOM for e in errors)
    assert parser.oom_seen


def test_an_error_after_an_oom_elsewhere_is_still_out_of_memory():
    # Given issue #463: an OOM while sampling, then an unrelated-looking error
    stream = (b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
              b"Error running job: local variable 'loss_dict' referenced before assignment\n")

    _, signals = parse(stream)

    (error,) = of(EngineError, signals)
    assert error.code == WorkerErrorCode.GPU_OOM


def test_error_running_job_is_an_engine_crash_with_the_message():
    _, signals = parse(b"Error running job: Could not find dataset folder /x\n\n========\nResult:\n - 0 completed jobs\n - 1 failure\n")

    (error,) = of(EngineError, signals)
    assert error.code == WorkerErrorCode.ENGINE_CRASHED
    assert "Could not find dataset folder /x" in error.message


def test_job_stopped_between_rulers_is_a_stop():
    parser, signals = parse(b"\n========================================\nJob stopped\n========================================\n")
    assert of(Stopped, signals) == [Stopped()]
    assert parser.stopped


def test_resume_lines_give_the_resumed_step_and_file():
    stream = (b"#### IMPORTANT RESUMING FROM /o/my_lora/my_lora_000000012.safetensors ####\n"
              b"Loading from /o/my_lora/my_lora_000000012.safetensors\n"
              b"Found step 12 in metadata, starting from there\n"
              b"Loading optimizer state from /o/my_lora/optimizer.pt\n")

    _, signals = parse(stream)

    assert of(Resumed, signals) == [Resumed(step=12, path="/o/my_lora/my_lora_000000012.safetensors")]


def test_multibyte_characters_split_across_reads_survive():
    # Given a bar whose block characters are split across pipe reads (chunk=1 byte)
    _, signals = parse("\rmy_lora:  50%|█████     | 5/10 [00:05<00:05, 1.00it/s, lr: 1.0e-04 loss: 1.0e+00]\n".encode(), chunk=1)
    assert [p.step for p in of(Progress, signals)] == [5]


def test_a_bar_redraw_of_the_same_step_is_logged_once():
    stream = b"\rmy_lora:  50%|#####     | 5/10 [00:05<00:05]\rmy_lora:  50%|#####     | 5/10 [00:05<00:05, loss: 1.0]\n"
    _, signals = parse(stream)
    assert len(of(Progress, signals)) == 2
    assert len([s for s in of(LogLine, signals) if "5/10" in s.text]) == 1


def test_output_without_line_ends_is_handed_on_in_bounded_pieces():
    # Given an engine that writes 1 MB without a line end, then a normal bar line
    splitter, lines = LineSplitter(max_line_chars=4096), []

    # When it arrives in 64 KiB reads
    blob = b"x" * 1_000_000 + b"\nmy_lora:  50%|##  | 5/10 [00:05<00:05, 1.0s/it, loss=0.5]\n"
    for i in range(0, len(blob), 65536):
        lines.extend(splitter.feed(blob[i:i + 65536]))
        # Then the buffer never holds more than one cut-off line
        assert len(splitter._buffer) <= 4096
    lines.extend(splitter.flush())

    # Then nothing is lost, no piece is over the bound, and the bar after it is still a whole line
    assert "".join(lines[:-1]) == "x" * 1_000_000 and max(len(line) for line in lines) <= 4096
    assert lines[-1].startswith("my_lora:  50%")
