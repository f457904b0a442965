"""POST /v1/datasets, GET /v1/datasets, GET /v1/datasets/{id}."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from ...logic.create_dataset import create_dataset
from ...logic.get_dataset import get_dataset, list_datasets
from ...models.requests import CreateDatasetRequest
from ..auth import JWT_SECURITY, OwnerId
from ..schemas import CreatedDataset, Cursor, DatasetDetail, DatasetIdPath, DatasetList, Limit, responses

router = APIGatewayHttpRouter()


@router.post("/v1/datasets", status_code=201, summary="Create a dataset and get a presigned upload for dataset.zip",
             tags=["datasets"], security=JWT_SECURITY, responses=responses(201, 400, 401, 413, 422))
def post_dataset(owner: OwnerId, body: Annotated[CreateDatasetRequest, Body(embed=False)]) -> CreatedDataset:
    dataset, upload = create_dataset(owner, body)
    return {**dataset.public(), "upload": dict(upload)}  # type: ignore[return-value]  # validated against CreatedDataset


@router.get("/v1/datasets", summary="Your datasets, newest first", tags=["datasets"], security=JWT_SECURITY,
            responses=responses(200, 401, 422))
def get_datasets(owner: OwnerId, limit: Limit = 20, cursor: Cursor = None) -> DatasetList:
    page = list_datasets(owner, limit=limit, cursor=cursor)
    return {"items": [d.public() for d in page.items], "next_cursor": page.next_cursor}  # type: ignore[return-value]


@router.get("/v1/datasets/<dataset_id>", summary="A dataset: status, stats, warnings, errors, rejected items", tags=["datasets"],
            security=JWT_SECURITY, responses=responses(200, 401, 404))
def get_dataset_detail(owner: OwnerId, dataset_id: DatasetIdPath) -> DatasetDetail:
    dataset, manifest = get_dataset(owner, dataset_id)
    link = {"url": manifest[0], "expires_at": manifest[1]} if manifest else None
    return {**dataset.public(), "manifest": link}  # type: ignore[return-value]
