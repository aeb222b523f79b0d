"""How the node writes a host and port in its messages and logs."""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal in brackets (RFC 3986: ``[::1]:11112``; ``::1:11112``
    does not parse, and reads as another address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
