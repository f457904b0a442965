"""AI-Toolkit's console output → normalized engine signals (reference/ai-toolkit.md §2).

The diffusers engine prints the same lines, so this is the one parser of every engine.

- The training bar is tqdm on stderr, redrawn with `\\r` and no newline:
  `NAME:  58%|█████▊    | 7/12 [00:23<00:04,  1.11it/s, lr: 1.0e-04 loss: 1.091e+00]`
  (`#` blocks on non-UTF-8 streams, `s/it` below one step a second). Only bars whose description is
  the run's name count: model-download and sampling bars are mixed into the same stream.
- Saves: `Saving at step N`, `Saved checkpoint to <path>`, `Saved optimizer to <path>`,
  `Removing old save: <path>` (stdout). The final save prints only the two `Saved …` lines.
- Resume: `#### IMPORTANT RESUMING FROM <file> ####`, `Found step N in metadata, starting from there`.
- OOM: a boxed `# OOM during training step, skipping batch i/3 #`, then
  `OOM during training step 3 times in a row, aborting training`.
- Failure: `Error running job: <msg>` (exit code 1). Stop: `Job stopped` between rulers (exit code 0).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path

from loraforge.contract import WorkerErrorCode


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None
    lr: float | None
    seconds_per_step: float | None
    eta_seconds: float | None


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path
    step: int | None
    """None for the final save (`<name>.safetensors`)."""


@dataclass(frozen=True)
class OptimizerSaved:
    path: Path


@dataclass(frozen=True)
class Resumed:
    step: int
    path: str | None


@dataclass(frozen=True)
class OomSkipped:
    count: int
    limit: int


@dataclass(frozen=True)
class EngineError:
    code: WorkerErrorCode
    message: str


@dataclass(frozen=True)
class Stopped:
    pass


@dataclass(frozen=True)
class LogLine:
    text: str


Signal = Progress | CheckpointSaved | OptimizerSaved | Resumed | OomSkipped | EngineError | Stopped | LogLine

_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_BAR_COUNT = re.compile(r"\|\s*(\d+)/(\d+)\s*(?:\[([^\]]*)\])?")
_ELAPSED = re.compile(r"^\s*([\d:]+)<([\d:]+|\?)")
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(it/s|s/it)")
_LOSS = re.compile(rf"\bloss:\s*({_NUMBER})")
_LR = re.compile(rf"\blr:\s*({_NUMBER})")
_SAVING = re.compile(r"^Saving at step (\d+)")
_SAVED = re.compile(r"^Saved checkpoint to (.+?)\s*$")
_SAVED_OPT = re.compile(r"^Saved optimizer to (.+?)\s*$")
_RESUMING = re.compile(r"#### IMPORTANT RESUMING FROM (.+?) ####")
_FOUND_STEP = re.compile(r"Found step (\d+) in metadata, starting from there")
_OOM_SKIP = re.compile(r"OOM during training step, skipping batch (\d+)/(\d+)")
_OOM_ABORT = re.compile(r"OOM during training step \d+ times in a row, aborting training")
_ERROR = re.compile(r"^Error running job: (.*)$")
_OOM_WORDS = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory", re.IGNORECASE)
_STEP_IN_NAME = re.compile(r"_(\d{9})(?:_(?:high|low)_noise)?\.safetensors$")


def _clock_seconds(text: str) -> float | None:
    if not text or text == "?":
        return None
    total = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        total = total * 60 + int(part)
    return total


def _number(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


# Longest line handed on whole; a tqdm bar or an AI-Toolkit log line is a few hundred characters.
MAX_LINE_CHARS = 64 * 1024


class LineSplitter:
    """Bytes of one stream → complete lines, split on `\\r` as well as `\\n` (tqdm redraws with `\\r`).

    A line longer than `max_line_chars` is cut there and handed on in pieces: an engine that writes without a
    line end (a binary dump, a runaway print) must not grow the worker's memory or re-split an ever longer buffer.
    """

    def __init__(self, max_line_chars: int = MAX_LINE_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._max = max_line_chars

    def feed(self, data: bytes) -> list[str]:
        self._buffer += self._decoder.decode(data)
        parts = re.split(r"[\r\n]", self._buffer)
        self._buffer = parts.pop()
        keep = len(self._buffer) % self._max or (self._max if self._buffer else 0)
        parts.append(self._buffer[: len(self._buffer) - keep])  # whole pieces of an unended line go on now
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return [piece for part in parts for piece in self._pieces(part) if piece.strip()]

    def _pieces(self, line: str) -> list[str]:
        return [line[i : i + self._max] for i in range(0, len(line), self._max)] or [line]

    def flush(self) -> list[str]:
        rest = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        return [rest] if rest.strip() else []


class OutputParser:
    """Interprets complete lines of either stream. Stateful: remembers OOMs and the last bar step."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar = re.compile(rf"^\s*{re.escape(name)}:\s")
        self.oom_seen = False
        self.stopped = False
        self.errors: list[EngineError] = []
        self.last_step: int | None = None
        self._resume_path: str | None = None

    def parse_bar(self, line: str) -> Progress | None:
        if not self._bar.match(line):
            return None
        count = _BAR_COUNT.search(line)
        if count is None:
            return None
        step, total = int(count.group(1)), int(count.group(2))
        inside = count.group(3) or ""
        eta = seconds_per_step = None
        if timing := _ELAPSED.match(inside):
            eta = _clock_seconds(timing.group(2))
        if rate := _RATE.search(inside):
            value = float(rate.group(1))
            seconds_per_step = value if rate.group(2) == "s/it" else (1.0 / value if value > 0 else None)
        return Progress(step=step, total=total, loss=_number(_LOSS.search(inside)), lr=_number(_LR.search(inside)),
                        seconds_per_step=seconds_per_step, eta_seconds=eta)

    def interpret(self, line: str) -> list[Signal]:
        text = line.rstrip()
        stripped = text.strip(" #")
        if (bar := self.parse_bar(text)) is not None:
            fresh = bar.step != self.last_step
            self.last_step = bar.step
            return [bar, LogLine(text.strip())] if fresh else [bar]
        signals: list[Signal] = [LogLine(text)]
        if _OOM_WORDS.search(text):
            self.oom_seen = True
        if m := _SAVED.match(stripped):
            path = Path(m.group(1))
            step = _STEP_IN_NAME.search(path.name)
            signals.append(CheckpointSaved(path=path, step=int(step.group(1)) if step else None))
        elif m := _SAVED_OPT.match(stripped):
            signals.append(OptimizerSaved(path=Path(m.group(1))))
        elif m := _RESUMING.search(text):
            self._resume_path = m.group(1)
        elif m := _FOUND_STEP.search(text):
            signals.append(Resumed(step=int(m.group(1)), path=self._resume_path))
        elif _OOM_ABORT.search(text):
            self.oom_seen = True
            error = EngineError(WorkerErrorCode.GPU_OOM, "out of GPU memory in 3 training steps in a row; lower the batch size or "
                                "resolution, enable quantization/low_vram, or pick a larger GPU class")
            self.errors.append(error)
            signals.append(error)
        elif m := _OOM_SKIP.search(text):
            self.oom_seen = True
            signals.append(OomSkipped(count=int(m.group(1)), limit=int(m.group(2))))
        elif m := _ERROR.match(stripped):
            error = self.classify_error(m.group(1))
            self.errors.append(error)
            signals.append(error)
        elif stripped == "Job stopped":
            self.stopped = True
            signals.append(Stopped())
        return signals

    def classify_error(self, message: str) -> EngineError:
        if self.oom_seen or _OOM_WORDS.search(message):
            return EngineError(WorkerErrorCode.GPU_OOM, f"out of GPU memory ({message.strip()[:300]}); lower the batch size or "
                               "resolution, enable quantization/low_vram, or pick a larger GPU class")
        return EngineError(WorkerErrorCode.ENGINE_CRASHED, f"the trainer failed: {message.strip()[:500]}")
