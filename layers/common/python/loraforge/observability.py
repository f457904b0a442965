"""The one Logger, Metrics and Tracer of the service (cookbook: handlers/utils/observability.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

SERVICE = "loraforge"


class _NoSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None: ...
    def add_subsegment(self, subsegment: Any) -> None: ...
    def remove_subsegment(self, subsegment: Any) -> None: ...
    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...


class _TracingOff(BaseProvider):
    """Provider used when tracing is off (tests, the local stack, POWERTOOLS_TRACE_DISABLED).

    Powertools' Tracer imports the X-Ray SDK core (≈200 ms of cold start) to build its default
    provider even when it then disables tracing; handing it this one skips that import.
    """

    @contextlib.contextmanager
    def in_subsegment(self, name: str | None = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield _NoSegment()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: str | None = None, **kwargs: Any) -> AsyncGenerator[BaseSegment, None]:
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None: ...
    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None: ...
    def patch(self, modules: Sequence[str]) -> None: ...
    def patch_all(self) -> None: ...


def _build_tracer() -> Tracer:
    # Powertools' own rule: off when POWERTOOLS_TRACE_DISABLED is set or outside Lambda (or under SAM local).
    if Tracer._is_tracer_disabled():
        return Tracer(service=SERVICE, disabled=True, auto_patch=False, provider=_TracingOff())
    # Patch only what the functions call out with (AWS SDK, RunPod and webhooks over httpx): patch_all would import
    # and instrument every library X-Ray supports on each cold start.
    return Tracer(service=SERVICE, patch_modules=("botocore", "httpx"))


logger = Logger(service=SERVICE)
metrics = Metrics(namespace="loraforge", service=SERVICE)
tracer = _build_tracer()
