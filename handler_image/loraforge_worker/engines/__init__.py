"""Training engines behind one interface (`base.TrainingEngine`)."""

from __future__ import annotations

from loraforge.contract import Engine

from .base import TrainingEngine


class UnknownEngine(ValueError):
    pass


def get_engine(engine: Engine | str) -> TrainingEngine:
    name = engine.value if isinstance(engine, Engine) else str(engine)
    if name == Engine.AI_TOOLKIT.value:
        from .ai_toolkit import AiToolkitEngine

        return AiToolkitEngine()
    if name == Engine.DIFFUSERS.value:
        from .diffusers_lora import DiffusersLoraEngine

        return DiffusersLoraEngine()
    known = [Engine.AI_TOOLKIT.value, Engine.DIFFUSERS.value]
    raise UnknownEngine(f"engine '{name}' is not available in this worker image (available: {', '.join(known)})")
