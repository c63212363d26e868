"""Where a backend listens, as ``server.address`` and ``server.port`` of its CLIENT spans.

Parsed once per backend when the app is built, from the url in its settings, never on the
request path.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

# The port a url without one reaches. gRPC's own default (its naming rules) is 443 too.
DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 443, "grpcs": 443}


class Server(NamedTuple):
    """A backend's host and port (None when neither the url nor its scheme names one)."""

    address: str
    port: int | None


def server_of(url: str) -> Server | None:
    """The host and port of ``url``: ``scheme://host[:port][/path]`` or a bare ``host:port``
    (gRPC style); None when no host can be read from it."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: the adapter will refuse it anyway
        return Server(host, None)
    return Server(host, DEFAULT_PORTS.get(parts.scheme) if port is None else port)
