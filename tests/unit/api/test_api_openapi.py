"""The committed openapi.json is what the resolver generates, and it documents auth and the error shape."""

from __future__ import annotations

import json
from pathlib import Path

from loraforge.api.resolver import app, openapi_document_text

COMMITTED = Path(__file__).resolve().parents[3] / "openapi.json"
NO_AUTH_PREFIXES = ("/v1/hooks/",)  # RunPod and worker callbacks: no authorizer, verified by token/signature


def test_committed_openapi_json_matches_the_code() -> None:
    # Given the document generated from the resolver's routes and models
    generated = openapi_document_text()
    # When compared with the committed file
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    # Then they are identical
    assert committed == generated, "openapi.json is out of date with the API code: run `make openapi` and commit openapi.json"


def test_every_user_route_requires_the_jwt_and_documents_the_error_shape() -> None:
    # Given the document
    document = json.loads(openapi_document_text())
    # Then every /v1 operation a user calls declares the bearer JWT and its 4xx answers use ErrorBody
    assert document["components"]["securitySchemes"]["jwt"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path.startswith(NO_AUTH_PREFIXES):
                continue
            assert operation.get("security") == [{"jwt": []}], f"{method} {path}"
            errors = {code: r for code, r in operation["responses"].items() if code.startswith("4")}
            assert "401" in errors, f"{method} {path}"
            for code, response in errors.items():
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (
                    f"{method} {path} {code}")


def test_creates_are_documented_as_201() -> None:
    # Given
    paths = json.loads(openapi_document_text())["paths"]
    # Then
    for path in ("/v1/jobs", "/v1/datasets", "/v1/jobs/{job_id}/retry"):
        assert "201" in paths[path]["post"]["responses"], path


def test_the_document_route_itself_is_not_in_the_document() -> None:
    assert "/openapi.json" not in json.loads(openapi_document_text())["paths"]
    assert app is not None
