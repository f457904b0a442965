"""What the RunPod and worker hooks answer, and the errors only they raise."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..models.errors import LoraforgeError


class HookReply(BaseModel):
    """200 for every authentic delivery, applied or not: the sender must stop retrying a stale or duplicate one."""

    status: Literal["applied", "ignored"]
    detail: str = Field(default="", description="Why a delivery changed nothing (duplicate, old attempt, job finished…)")


class RunPodUnreachable(LoraforgeError):
    """RunPod could not confirm a webhook: 503 so RunPod delivers it again (reconcile is the backstop)."""

    status = 503
    code = "RUNPOD_UNAVAILABLE"


def applied(detail: str = "") -> HookReply:
    return HookReply(status="applied", detail=detail)


def ignored(detail: str) -> HookReply:
    return HookReply(status="ignored", detail=detail)
