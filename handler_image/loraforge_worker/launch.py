"""Supervisor that runs an engine command: `python launch.py <argv...>` (stdlib only, run by path).

The worker starts it as the leader of a new session/process group, so one `killpg` reaches the
engine and everything it spawned (data-loader workers…). It exists for two reasons:

1. SIGINT must reach the engine at its *default* disposition (Python then raises
   KeyboardInterrupt and AI-Toolkit prints `Job stopped`). A process started from a
   non-interactive shell inherits SIG_IGN, which survives exec; handlers installed here are
   reset by exec, so the engine always starts with the default.
2. If the worker dies (a hard kill, an OOM-killed handler), nobody would stop the engine: it is
   in its own session. The supervisor watches its parent and kills the group when it changes.

The supervisor itself ignores SIGINT (the engine decides how to stop) and exits with the
engine's exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PARENT_ENV = "LORAFORGE_SUPERVISOR_PARENT"
POLL_SECONDS = 0.5


def _kill_group() -> None:
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: launch.py <command> [args...]", file=sys.stderr)
        return 2
    expected_parent = int(os.environ.pop(PARENT_ENV, "0") or 0)
    if expected_parent and os.getppid() != expected_parent:
        return 1  # the worker died before we started: do not train for nobody
    parent = os.getppid()
    # A Python-level handler (not SIG_IGN) so the child's exec resets SIGINT to its default.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    child = subprocess.Popen(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: _forward(child, signum))
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                _kill_group()
    return code if code >= 0 else 128 - code


def _forward(child: subprocess.Popen[bytes], signum: int) -> None:
    if child.poll() is None:
        child.send_signal(signum)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
