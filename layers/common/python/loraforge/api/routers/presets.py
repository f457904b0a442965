"""GET /v1/presets."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from ...logic.list_presets import PresetInfo, list_presets
from ...models.base import DomainModel
from ..auth import JWT_SECURITY, OwnerId
from ..schemas import responses

router = APIGatewayHttpRouter()


class PresetList(DomainModel):
    items: list[PresetInfo]


@router.get("/v1/presets", summary="Every preset with its defaults, bounds, VRAM and GPU", tags=["presets"],
            security=JWT_SECURITY, responses=responses(200, 401))
def get_presets(owner: OwnerId) -> PresetList:
    return PresetList(items=list_presets())
