"""RunPod serverless entry point of the loraforge worker image: `python -u handler.py`.

An async handler (RunPod's job-stop signal reaches a running job only as asyncio task
cancellation). The work is in `loraforge_worker.pipeline`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

NETWORK_VOLUME = Path(os.environ.get("RUNPOD_VOLUME_PATH", "/runpod-volume"))


def configure_environment() -> None:
    """Model caches on the network volume when one is mounted (weights survive across workers)."""
    if NETWORK_VOLUME.is_dir() and os.access(NETWORK_VOLUME, os.W_OK):
        os.environ.setdefault("HF_HOME", str(NETWORK_VOLUME / "huggingface"))
        os.environ.setdefault("LORAFORGE_MODEL_CACHE", str(NETWORK_VOLUME / "loraforge" / "models"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=os.environ.get("LORAFORGE_LOG_LEVEL", "INFO"), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _progress_mirror(job: dict[str, Any]) -> Any:
    from runpod.serverless import progress_update

    def mirror(payload: dict[str, Any]) -> None:
        progress_update(job, payload)

    return mirror


async def async_handler(job: dict[str, Any]) -> dict[str, Any]:
    from loraforge_worker.pipeline import handle
    from loraforge_worker.runtime import WorkerRuntime

    return await handle(job, WorkerRuntime(mirror_factory=_progress_mirror))


def main() -> None:
    configure_environment()
    import runpod

    runpod.serverless.start({"handler": async_handler})


if __name__ == "__main__":
    main()
