"""Where did the engine really start, when it was asked to resume? Its `Found step N` claim and its first training bar
(tqdm is created with `initial=<start>`, so its first draw shows the start step), read by the one output parser both
engines' lines go through."""

from __future__ import annotations

import pytest

from loraforge.models.job import ResumeReport
from loraforge_worker.engines.output_parser import OutputParser, Progress, Resumed
from loraforge_worker.resume_check import ResumeCheck, not_honoured_message

NAME = "job_x"
FOUND_4 = "Found step 4 in metadata, starting from there"


def bar(step: int, total: int = 12) -> str:
    return f"{NAME}:  {int(100 * step / total)}%|#    | {step}/{total} [00:01<00:08,  1.11it/s, lr: 1.0e-04 loss: 1.0e-01]"


def decide(lines: list[str], requested: int = 4) -> ResumeReport | None:
    """Feed engine lines through the parser into the check, as the training session does."""
    parser, check = OutputParser(NAME), ResumeCheck(requested)
    for line in lines:
        for sig in parser.interpret(line):
            if isinstance(sig, Resumed):
                check.on_claim(sig.step)
            elif isinstance(sig, Progress):
                check.on_progress(sig.step)
    check.on_end()
    return check.report


@pytest.mark.parametrize(("lines", "started", "honoured"), [
    ([f"#### IMPORTANT RESUMING FROM /w/{NAME}_000000004.safetensors ####", FOUND_4, bar(4), bar(5)], 4, True),  # tqdm initial draw
    ([FOUND_4, bar(5), bar(6)], 4, True),                      # an engine that draws only after a step: the claim covers it
    ([bar(0), bar(1)], 0, False),                              # no checkpoint loaded: trained from scratch without a word
    ([FOUND_4, bar(0), bar(1)], 0, False),                     # AI-Toolkit #1058: says it resumes, restarts at 0
    (["Found step 2 in metadata, starting from there", bar(2)], 2, False),  # picked up an older step (#329: repeats steps)
    (["Found step 8 in metadata, starting from there", bar(8)], 8, False),  # a later one: steps 5-8 would never be trained
    ([FOUND_4, "Error running job: CUDA error"], 4, True),     # no bar before a crash: the claim alone decides
])
def test_the_start_step_is_the_claim_the_first_bar_agrees_with_else_the_first_bar(lines: list[str], started: int, honoured: bool) -> None:
    # Given an engine asked to resume from step 4 printing `lines`
    # When they are read
    report = decide(lines)

    # Then the report names where it really started and whether that is the checkpoint's step
    assert report == ResumeReport(requested_step=4, started_step=started, honoured=honoured)


def test_nothing_is_claimed_about_an_engine_that_ended_before_it_said_or_trained_anything() -> None:
    # Given an engine that failed while loading the model
    # When its lines are read
    report = decide(["Loading VAE", "Error running job: out of disk"])

    # Then no report is made (nothing is known)
    assert report is None


def test_the_first_bar_decides_once() -> None:
    # Given a check decided by a bar at the requested step
    check = ResumeCheck(4)
    first = check.on_progress(4)

    # When later bars and a late claim arrive
    later = [check.on_progress(0), check.on_claim(0), check.on_end()]

    # Then only the first call returned the report, and it stands
    assert first == ResumeReport(requested_step=4, started_step=4, honoured=True)
    assert later == [None, None, None] and check.report == first


def test_the_warning_says_which_steps_are_trained_again() -> None:
    # Given an engine that restarted at 0 instead of 4, out of 12 steps
    report = ResumeReport(requested_step=4, started_step=0, honoured=False)

    # When the warning is written
    message = not_honoured_message(report, 12)

    # Then it names the code, both steps and the retrained range
    assert message == ("RESUME_NOT_HONOURED: the trainer started at step 0, not at step 4 of the checkpoint it was given; it trains "
                       "steps 1-12 (steps 1-4 again) and progress counts from step 0")
