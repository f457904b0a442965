"""What every API command shares: where the API is, who the caller is, the HTTP client, errors and output.

The CLI is a thin httpx client over the HTTP API (DESIGN §6), so the same commands work against the
local stack and a deployed stack. The API URL and bearer token come from, in order: `--api-url` /
`--token`, the environment (`LORAFORGE_API_URL`, `LORAFORGE_TOKEN`), or the local stack's state file
(`.loraforge/local.json`, written by `loraforge local up`) with `--user`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Exit codes (documented in docs/cli.md).
EXIT_OK = 0
EXIT_ERROR = 1  # the request failed: API error, network error, bad local input
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_NOT_SUCCEEDED = 3  # the command worked but the job/dataset ended failed, cancelled or invalid

DEFAULT_STATE_DIR = ".loraforge"
STATE_FILE = "local.json"
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class CliError(Exception):
    """An error the CLI reports as one line (never a traceback) and turns into an exit code."""

    def __init__(self, message: str, *, exit_code: int = EXIT_ERROR, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.body = body


class ApiError(CliError):
    """A non-2xx answer. `code` is the API's error code (or API Gateway's plain message)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}", body={"error": {"code": code, "message": message, "details": details, "status": status}})
        self.status = status
        self.code = code
        self.details = details


def error_from_response(response: httpx.Response) -> ApiError:
    """Our API answers `{"error": {code, message, details}}`; API Gateway itself answers `{"message": ...}` (401, 404, 413)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or f"HTTP_{response.status_code}")
        return ApiError(response.status_code, code, str(err.get("message") or ""), err.get("details"))
    if isinstance(body, dict) and "message" in body:
        return ApiError(response.status_code, _GATEWAY_CODES.get(response.status_code, f"HTTP_{response.status_code}"), str(body["message"]))
    text = response.text.strip()[:300] or response.reason_phrase
    return ApiError(response.status_code, _GATEWAY_CODES.get(response.status_code, f"HTTP_{response.status_code}"), text)


_GATEWAY_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 413: "PAYLOAD_TOO_LARGE", 429: "TOO_MANY_REQUESTS"}


# -- where the API is -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalState:
    """`.loraforge/local.json` (DESIGN §10)."""

    api_url: str
    tokens: dict[str, str]
    aws_endpoint_url: str
    bucket: str
    table: str
    topic_arn: str
    runpod_url: str

    @classmethod
    def load(cls, state_dir: str | Path) -> LocalState | None:
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise CliError(f"{path} is not a local stack state file ({exc}); restart `loraforge local up`") from exc


@dataclass(frozen=True)
class Target:
    api_url: str
    token: str
    local: LocalState | None = None
    user: str | None = None

    @property
    def owner(self) -> str | None:
        """The caller's owner id: the token's `sub` (read without verifying; the API verifies)."""
        return jwt_subject(self.token) or self.user


def jwt_subject(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def resolve_target(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Target:
    env = os.environ if environ is None else environ
    state = LocalState.load(getattr(args, "state_dir", None) or env.get("LORAFORGE_STATE_DIR") or DEFAULT_STATE_DIR)
    api_url = getattr(args, "api_url", None) or env.get("LORAFORGE_API_URL") or (state.api_url if state else None)
    token = getattr(args, "token", None) or env.get("LORAFORGE_TOKEN")
    user = getattr(args, "user", None) or env.get("LORAFORGE_USER")
    if not api_url:
        raise CliError("no API configured: pass --api-url and --token, set LORAFORGE_API_URL and LORAFORGE_TOKEN, or start `loraforge local up`")
    if not token:
        if state is None or api_url.rstrip("/") != state.api_url.rstrip("/"):
            raise CliError("no token: pass --token or set LORAFORGE_TOKEN")
        user = user or next(iter(state.tokens))
        if user not in state.tokens:
            raise CliError(f"unknown local user {user!r}; the local stack has: {', '.join(state.tokens)}")
        token = state.tokens[user]
    local = state if state is not None and api_url.rstrip("/") == state.api_url.rstrip("/") else None
    return Target(api_url=api_url.rstrip("/"), token=token, local=local, user=user)


# -- the HTTP client --------------------------------------------------------------------------------
class ApiClient:
    def __init__(self, target: Target, *, transport: httpx.BaseTransport | None = None) -> None:
        self.target = target
        self._http = httpx.Client(
            base_url=target.api_url,
            headers={"Authorization": f"Bearer {target.token}", "User-Agent": "loraforge-cli"},
            timeout=REQUEST_TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=json_body, params=_drop_none(params), headers=headers)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the API at {self.target.api_url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"the API answered {method} {path} with a body that is not JSON") from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {}, headers=headers)

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a `{"items", "next_cursor"}` list, following the cursor."""
        cursor = None
        while True:
            page = self.get(path, **params, cursor=cursor)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return


def _drop_none(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if params is None else {k: v for k, v in params.items() if v is not None}


def download_url(url: str, dest: Path, *, expected_sha256: str | None = None) -> int:
    """Streams a presigned GET to `dest` (via a temporary file, so a broken download leaves no partial file)."""
    import hashlib

    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    size = 0
    try:
        with httpx.stream("GET", url, timeout=REQUEST_TIMEOUT, follow_redirects=False) as response:
            if response.status_code != 200:
                raise CliError(f"download of {dest.name} failed: HTTP {response.status_code}")
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"download of {dest.name} failed: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if expected_sha256 and digest.hexdigest() != expected_sha256:
        tmp.unlink(missing_ok=True)
        raise CliError(f"download of {dest.name} is corrupt: sha256 {digest.hexdigest()} != {expected_sha256}")
    tmp.replace(dest)
    return size


# -- arguments and output ---------------------------------------------------------------------------
def api_options() -> argparse.ArgumentParser:
    """Options every API command takes (argparse parent)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("API")
    group.add_argument("--api-url", help="API base URL (env LORAFORGE_API_URL; default: the local stack's)")
    group.add_argument("--token", help="Bearer token (env LORAFORGE_TOKEN; default: the local stack user's)")
    group.add_argument("--user", help="Local stack user whose token to use (env LORAFORGE_USER; default: the first)")
    group.add_argument("--state-dir", help=f"Local stack state folder (env LORAFORGE_STATE_DIR; default {DEFAULT_STATE_DIR})")
    parent.add_argument("--json", action="store_true", help="Print machine-readable JSON")
    return parent


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def command(func: Callable[[argparse.Namespace, ApiClient], int | None]) -> Callable[[argparse.Namespace], int]:
    """Wraps an API command: builds the client, and turns any CliError into one line and an exit code."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            with ApiClient(resolve_target(args)) as api:
                return int(func(args, api) or EXIT_OK)
        except CliError as exc:
            report_error(args, exc)
            return exc.exit_code
        except OSError as exc:  # local files: -o onto a file, a folder not writable, disk full, an unreadable image
            where = f": {exc.filename}" if exc.filename else ""
            report_error(args, CliError(f"{exc.strerror or exc}{where}"))
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run


def report_error(args: argparse.Namespace, exc: CliError) -> None:
    if getattr(args, "json", False):
        print_json(exc.body if exc.body is not None else {"error": {"code": "CLI_ERROR", "message": exc.message}})
    print(f"error: {exc.message}", file=sys.stderr)


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
