"""The HTTP API on loopback: each request becomes an API Gateway HTTP API (payload v2) event for the real
`functions/api` `lambda_handler`, as API Gateway would build it.

Routes, the default JWT authorizer, the routes without one (`Auth: {Authorizer: NONE}`: the RunPod
and worker hooks, /openapi.json) and CORS all come from template.yaml. The JWT authorizer is played
by `LocalIssuer`: a missing or unknown token gets API Gateway's own `401 {"message":"Unauthorized"}`
and never reaches the function; a valid one becomes `requestContext.authorizer.jwt.claims`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .auth import LocalIssuer, bearer_token

log = logging.getLogger("loraforge.local.api")

# API Gateway refuses a request whose Lambda event would pass Lambda's 6 MB synchronous payload limit.
MAX_BODY_BYTES = 6 * 1024 * 1024 - 64 * 1024
API_ID = "local"
HttpResult = tuple[int, list[tuple[str, str]], bytes]
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded", "application/xml", "application/javascript")


@dataclass(frozen=True)
class Route:
    method: str  # "ANY" or an HTTP method
    path: str  # template path: /v1/{proxy+}, /v1/hooks/runpod/{job}/{token}
    authorized: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        pattern = "^"
        for segment in self.path.strip("/").split("/"):
            greedy = re.fullmatch(r"\{(\w+)\+\}", segment)
            variable = re.fullmatch(r"\{(\w+)\}", segment)
            if greedy:
                pattern += rf"/(?P<{greedy.group(1)}>.+)"
            elif variable:
                pattern += rf"/(?P<{variable.group(1)}>[^/]+)"
            else:
                pattern += "/" + re.escape(segment)
        found = re.match(pattern + "$", path)
        return None if found is None else found.groupdict()

    @property
    def specificity(self) -> tuple[int, int, int]:
        """API Gateway prefers routes without a greedy variable, then more literal segments, then a named method."""
        segments = self.path.strip("/").split("/")
        return (0 if "+}" in self.path else 1, sum(1 for s in segments if not s.startswith("{")), 0 if self.method == "ANY" else 1)


def routes_from_template(template: Mapping[str, Any], function_id: str = "ApiFunction") -> list[Route]:
    resources = template.get("Resources") or {}
    function = resources[function_id]
    routes = []
    for event in ((function.get("Properties") or {}).get("Events") or {}).values():
        if event.get("Type") != "HttpApi":
            continue
        props = event.get("Properties") or {}
        api_id = (props.get("ApiId") or {}).get("Ref")
        default_authorizer = (((resources.get(api_id) or {}).get("Properties") or {}).get("Auth") or {}).get("DefaultAuthorizer")
        authorizer = (props.get("Auth") or {}).get("Authorizer", default_authorizer)
        routes.append(Route(method=str(props.get("Method", "ANY")).upper(), path=props["Path"], authorized=authorizer not in (None, "NONE")))
    return sorted(routes, key=lambda r: r.specificity, reverse=True)


def cors_from_template(template: Mapping[str, Any], api_id: str = "HttpApi") -> dict[str, Any] | None:
    props = ((template.get("Resources") or {}).get(api_id) or {}).get("Properties") or {}
    return props.get("CorsConfiguration")


def build_event(*, route: Route, path_parameters: dict[str, str], method: str, raw_path: str, raw_query: str,
                headers: list[tuple[str, str]], body: bytes, claims: dict[str, Any] | None, source_ip: str = "127.0.0.1",
                region: str = "us-east-1", account_id: str = "123456789012") -> dict[str, Any]:
    """An API Gateway HTTP API payload v2 event (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html)."""
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        merged[lower] = f"{merged[lower]},{value}" if lower in merged else value
    host = merged.get("host", "127.0.0.1")
    merged.setdefault("x-forwarded-for", source_ip)
    merged.setdefault("x-forwarded-proto", "http")
    merged.setdefault("x-forwarded-port", host.rsplit(":", 1)[1] if ":" in host else "80")
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    content_type = merged.get("content-type", "")
    is_text = not body or content_type.startswith(_TEXT_TYPES) or "+json" in content_type
    encoded_body: str | None
    if not body:
        encoded_body, is_base64 = None, False
    elif is_text:
        try:
            encoded_body, is_base64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            encoded_body, is_base64 = base64.b64encode(body).decode(), True
    else:
        encoded_body, is_base64 = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    request_context: dict[str, Any] = {
        "accountId": account_id,
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": source_ip, "userAgent": merged.get("user-agent", "")},
        "requestId": str(uuid.uuid4()),
        "routeKey": route.key,
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }
    if claims is not None:
        # API Gateway hands claims to the function as strings.
        as_strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in claims.items()}
        request_context["authorizer"] = {"jwt": {"claims": as_strings, "scopes": None}}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": merged,
        "requestContext": request_context,
        "isBase64Encoded": is_base64,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if encoded_body is not None:
        event["body"] = encoded_body
    return event


def http_response(result: Any) -> HttpResult:
    """A Lambda result → (status, headers, body), as API Gateway maps payload v2 responses."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # A function may return any JSON value: API Gateway answers 200 with it.
        return 200, [("Content-Type", "application/json")], json.dumps(result).encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or [])
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    return int(result["statusCode"]), headers, raw


class LocalApiGateway:
    """Routing, authorization and the Lambda call, independent of the HTTP server (unit-testable)."""

    def __init__(self, invoke: Callable[[dict[str, Any]], Any], routes: list[Route], issuer: LocalIssuer,
                 cors: Mapping[str, Any] | None = None, *, region: str = "us-east-1") -> None:
        self.invoke = invoke
        self.routes = routes
        self.issuer = issuer
        self.cors = cors
        self.region = region

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> HttpResult:
        parts = urlsplit(target)
        raw_path = parts.path or "/"
        origin = next((v for k, v in headers if k.lower() == "origin"), None)
        preflight = method == "OPTIONS" and self.cors and origin and any(k.lower() == "access-control-request-method" for k, _ in headers)
        # API Gateway answers a preflight itself only when no route takes OPTIONS; a route that does (ANY, OPTIONS, $default)
        # gets it like any request, authorizer included, and API Gateway adds the CORS headers to the integration's answer.
        if preflight and not any(route.match("OPTIONS", raw_path) is not None for route in self.routes):
            return 204, self._preflight_headers(), b""
        status, out_headers, out_body = self._route(method, raw_path, parts.query, headers, body)
        if preflight:
            out_headers = [*out_headers, *self._preflight_headers()]
        elif self.cors and origin:
            out_headers = [*out_headers, ("Access-Control-Allow-Origin", self._allowed_origin(origin))]
        return status, out_headers, out_body

    def _route(self, method: str, raw_path: str, raw_query: str, headers: list[tuple[str, str]], body: bytes) -> HttpResult:
        for route in self.routes:
            params = route.match(method, raw_path)
            if params is None:
                continue
            claims = None
            if route.authorized:
                token = bearer_token(next((v for k, v in headers if k.lower() == "authorization"), None))
                claims = self.issuer.verify(token) if token else None
                if claims is None:
                    return _gateway_error(401, "Unauthorized", [("www-authenticate", 'Bearer error="invalid_token"')])
            event = build_event(route=route, path_parameters=params, method=method, raw_path=raw_path, raw_query=raw_query,
                                headers=headers, body=body, claims=claims, region=self.region)
            try:
                return http_response(self.invoke(event))
            except Exception:  # the function crashed: API Gateway answers 500 and the log has the traceback
                log.error("api function raised on %s %s\n%s", method, raw_path, traceback.format_exc())
                return _gateway_error(500, "Internal Server Error")
        return _gateway_error(404, "Not Found")

    def _allowed_origin(self, origin: str) -> str:
        allowed = list((self.cors or {}).get("AllowOrigins") or [])
        return "*" if "*" in allowed else (origin if origin in allowed else "null")

    def _preflight_headers(self) -> list[tuple[str, str]]:
        cors = self.cors or {}
        return [
            ("Access-Control-Allow-Origin", "*" if "*" in (cors.get("AllowOrigins") or []) else ",".join(cors.get("AllowOrigins") or [])),
            ("Access-Control-Allow-Methods", ",".join(cors.get("AllowMethods") or [])),
            ("Access-Control-Allow-Headers", ",".join(cors.get("AllowHeaders") or [])),
            ("Access-Control-Max-Age", str(cors.get("MaxAge", 0))),
        ]


def _gateway_error(status: int, message: str, extra: list[tuple[str, str]] | None = None) -> HttpResult:
    return status, [("Content-Type", "application/json"), *(extra or [])], json.dumps({"message": message}).encode()


class _RequestHandler(BaseHTTPRequestHandler):
    server: _ApiHttpServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        started = time.perf_counter()
        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            size = int(length) if length else 0
        except ValueError:
            size = -1
        if size < 0 or size > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, [("Content-Type", "application/json")], b'{"message":"Request Entity Too Large"}')
            return
        body = self._read_chunked() if chunked else (self.rfile.read(size) if size else b"")
        if body is None:
            self.close_connection = True
            self._send(413, [("Content-Type", "application/json")], b'{"message":"Request Entity Too Large"}')
            return
        status, headers, payload = self.server.gateway.handle(self.command, self.path, list(self.headers.items()), body)
        self._send(status, headers, payload)
        log.info("%s %s -> %d (%.1f ms)", self.command, self.path.split("?")[0], status, (time.perf_counter() - started) * 1000)

    def _read_chunked(self) -> bytes | None:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            chunk_size = int(line.split(b";")[0].strip() or b"0", 16)
            if chunk_size == 0:
                self.rfile.readline(1024)
                return bytes(data)
            if len(data) + chunk_size > MAX_BODY_BYTES:
                return None
            data += self.rfile.read(chunk_size)
            self.rfile.readline(1024)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        names = set()
        for name, value in headers:
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            names.add(name.lower())
            self.send_header(name, value)
        if "content-type" not in names and body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug(format, *args)


class _ApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], gateway: LocalApiGateway) -> None:
        super().__init__(address, _RequestHandler)
        self.gateway = gateway


class LocalApiServer:
    """A threaded HTTP server on 127.0.0.1 in front of a LocalApiGateway."""

    def __init__(self, gateway: LocalApiGateway, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self._server = _ApiHttpServer((host, port), gateway)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
