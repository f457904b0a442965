"""The HTTP API (DESIGN §6): a powertools APIGatewayHttpResolver with validation, one router per resource.

resolver.py builds the app (routers, error mapping, bounded JSON bodies, GET /openapi.json);
auth.py turns the JWT authorizer's verified `sub` into the owner; errors.py maps every failure to
`{"error": {"code", "message", "details"}}`; schemas.py holds the response models; routers/ the routes,
each calling one function in loraforge.logic.
"""
