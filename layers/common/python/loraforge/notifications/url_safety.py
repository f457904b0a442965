"""SSRF guard for user-supplied webhook URLs: https only, and no private, loopback, link-local,
multicast or reserved target after DNS resolution.

The local stack (and only it) sets LORAFORGE_LOCAL_ALLOW_LOOPBACK so test receivers on 127.0.0.1
work over http; no API field can change that.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from ..models.errors import InvalidInput
from ..settings import get_settings

Resolver = Callable[[str, int], list[str]]


def _system_resolver(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def _is_public(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_link_local or addr.is_loopback or addr.is_private)


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    return addr.is_loopback or (isinstance(addr, ipaddress.IPv6Address) and bool(addr.ipv4_mapped) and addr.ipv4_mapped.is_loopback)


def check_webhook_url(url: str, *, resolve: bool = True, resolver: Resolver | None = None) -> list[str]:
    """Raise InvalidInput(INVALID_WEBHOOK_URL) unless `url` is a safe public https target.

    Returns the resolved addresses (the caller connects to one of these, so a DNS answer that
    changes between check and use cannot redirect it). With resolve=False only the literal is checked.
    """
    allow_loopback = get_settings().allow_loopback_webhooks
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput("webhook_url is not a valid URL", code="INVALID_WEBHOOK_URL") from exc
    host = parts.hostname
    if not host:
        raise InvalidInput("webhook_url has no host", code="INVALID_WEBHOOK_URL")
    if parts.username or parts.password:
        raise InvalidInput("webhook_url must not carry credentials", code="INVALID_WEBHOOK_URL")
    local_ok = allow_loopback and parts.scheme in ("http", "https")
    if parts.scheme != "https" and not local_ok:
        raise InvalidInput("webhook_url must use https", code="INVALID_WEBHOOK_URL")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        literal = []
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            literal = ["127.0.0.1"]
    if literal or resolve:
        try:
            addresses = literal or (resolver or _system_resolver)(host, port)
        except OSError as exc:
            raise InvalidInput(f"webhook_url host '{host}' does not resolve", code="INVALID_WEBHOOK_URL") from exc
        except UnicodeError as exc:  # the IDNA codec refuses the name before any DNS query: no later lookup can succeed
            raise InvalidInput(f"webhook_url host '{host[:100]}' is not a valid host name (a label is empty or longer than 63 characters)",
                               code="INVALID_WEBHOOK_URL") from exc
        for ip in addresses:
            if _is_public(ip) or (allow_loopback and _is_loopback(ip)):
                continue
            raise InvalidInput(
                "webhook_url points to a private, loopback or link-local address",
                code="INVALID_WEBHOOK_URL", details={"address": ip},
            )
        return addresses
    return []
