"""The engine supervisor (loraforge_worker/launch.py): SIGINT reaches the engine at its default
disposition, the exit status passes through, and the engine dies with the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from loraforge_worker.engines.process import LAUNCHER, group_alive

CHECK_SIGINT = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def test_engine_gets_default_sigint_even_from_a_parent_that_ignores_it():
    # Given a parent started like a background job of a non-interactive shell (SIGINT ignored, inherited across exec)
    direct = subprocess.run(["sh", "-c", f'trap "" INT; exec "{sys.executable}" -c "{CHECK_SIGINT}"'], capture_output=True, text=True)
    supervised = subprocess.run(["sh", "-c", f'trap "" INT; exec "{sys.executable}" "{LAUNCHER}" "{sys.executable}" -c "{CHECK_SIGINT}"'],
                                capture_output=True, text=True)
    # Then without the supervisor Python would ignore Ctrl-C; under it the engine gets KeyboardInterrupt
    assert direct.stdout.strip() == "False"
    assert supervised.stdout.strip() == "True"


def test_exit_status_passes_through():
    assert subprocess.run([sys.executable, str(LAUNCHER), sys.executable, "-c", "raise SystemExit(3)"]).returncode == 3
    assert subprocess.run([sys.executable, str(LAUNCHER), sys.executable, "-c", "pass"]).returncode == 0


def test_sigint_to_the_group_stops_the_engine_but_not_before_it_reacts():
    # Given a supervised engine that prints `Job stopped` on KeyboardInterrupt and exits 0 (AI-Toolkit's behaviour)
    engine = "import time\ntry:\n    print('ready', flush=True); time.sleep(60)\nexcept KeyboardInterrupt:\n    print('Job stopped', flush=True)"
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), sys.executable, "-c", engine], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    # When the worker sends SIGINT to the whole group
    os.killpg(proc.pid, signal.SIGINT)
    # Then the engine stops cleanly and the supervisor reports its exit code 0
    out, _ = proc.communicate(timeout=10)
    assert "Job stopped" in out and proc.returncode == 0


def test_the_engine_group_dies_when_the_worker_dies():
    # Given a worker process that started a supervised engine in its own session, then is SIGKILLed
    worker_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, {str(LAUNCHER)!r}, sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", worker_code], stdout=subprocess.PIPE, text=True)
    engine_group = int(worker.stdout.readline())
    time.sleep(0.5)
    assert group_alive(engine_group)
    worker.kill()
    worker.wait()
    # Then the supervisor notices its parent is gone and kills the engine group within a few seconds
    deadline = time.monotonic() + 10
    while group_alive(engine_group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(engine_group)


def test_the_engine_cannot_read_the_workers_runpod_credentials(tmp_path, monkeypatch):
    # Given a worker whose environment holds RunPod's API key and job URLs (the SDK loop's), HF_TOKEN, and a run variable
    import asyncio

    from loraforge_worker.engines.base import EngineRun
    from loraforge_worker.engines.output_parser import LogLine, OutputParser
    from loraforge_worker.engines.process import EngineProcess

    monkeypatch.setenv("RUNPOD_AI_API_KEY", "rpa_secret")
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/ep/job-take/$ID")
    monkeypatch.setenv("HF_TOKEN", "hf_model_access")
    script = "import os; print(sorted(k for k in os.environ if k.startswith(('RUNPOD_', 'HF_TOKEN', 'RUN_VAR'))))"
    run = EngineRun(argv=[sys.executable, "-c", script], cwd=tmp_path, config_path=tmp_path / "c.yaml", env={"RUN_VAR": "1"})

    # When the engine starts and prints the variables it can see
    async def engine_output() -> list[str]:
        engine = EngineProcess(run, OutputParser("my_lora"))
        await engine.start()
        lines = [s.text for s in [s async for s in engine.signals()] if isinstance(s, LogLine)]
        await engine.wait()
        return lines

    lines = asyncio.run(engine_output())

    # Then it sees HF_TOKEN and its own variables, never RunPod's credentials
    assert "['HF_TOKEN', 'RUN_VAR']" in lines
