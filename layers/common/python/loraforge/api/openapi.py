"""The OpenAPI document, generated from the resolver. `make openapi` writes it to openapi.json (committed);
a test fails when the committed file differs from what the code generates."""

from __future__ import annotations

import json
import sys

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

from .. import __version__
from .auth import SECURITY_SCHEME_NAME

DESCRIPTION = (
    "Serverless LoRA training. Every route except GET /openapi.json and the RunPod/worker hooks needs "
    "`Authorization: Bearer <JWT>`; the token's `sub` is the owner, and another owner's resource is a 404. "
    "Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`; lists are `{\"items\", \"next_cursor\"}`. "
    "A method a path does not take is a 405 METHOD_NOT_ALLOWED with an `Allow` header listing the methods it does. "
    "Request bodies are JSON objects of at most 64 KiB."
)


def openapi_document(app: APIGatewayHttpResolver) -> str:
    """Pretty-printed, keys sorted: stable text to commit and diff."""
    raw = app.get_openapi_json_schema(
        title="loraforge API",
        version=__version__,
        description=DESCRIPTION,
        security_schemes={SECURITY_SCHEME_NAME: HTTPBearer(bearerFormat="JWT")},
    )
    return json.dumps(json.loads(raw), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    from .resolver import app

    sys.stdout.write(openapi_document(app))


if __name__ == "__main__":
    main()
