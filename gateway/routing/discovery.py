"""Where a pool's instances are listed: a DNS name with one address per instance, or the
EndpointSlices of a Kubernetes Service. Routing counts them (ready, and up and billed).

``dns://name:port`` resolves the name on each probe; every address is a ready instance (a
headless Service lists ready pods only). ``k8s://namespace/service`` reads the Service's
EndpointSlices through the API server with the pod's service-account token: endpoints whose
``ready`` condition holds serve, the others (booting, terminating) are still billed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API_SERVER = "https://kubernetes.default.svc"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A pool's instances as its listing shows them."""

    ready: int
    up: int


class Discovery(Protocol):
    """Lists a pool's instances."""

    async def endpoints(self) -> Endpoints:
        """The instances now; raises on a failed lookup (the last count is kept)."""
        ...


@dataclass(frozen=True, slots=True)
class DnsDiscovery:
    """Every distinct address a name resolves to is one ready instance."""

    host: str
    port: int

    async def endpoints(self) -> Endpoints:
        """Resolve the name now."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )
        count = len({info[4][0] for info in infos})
        return Endpoints(count, count)


@dataclass(slots=True)
class KubernetesDiscovery:
    """A Service's EndpointSlices, read with the pod's service-account credentials."""

    namespace: str
    service: str
    api_server: str = API_SERVER
    credentials: Path = SERVICE_ACCOUNT
    _session: aiohttp.ClientSession | None = None

    async def endpoints(self) -> Endpoints:
        """List the Service's slices now."""
        token = (self.credentials / "token").read_text().strip()
        url = (f"{self.api_server}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}"
               f"/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{self.service}")
        if self._session is None:
            ca = self.credentials / "ca.crt"
            context = ssl.create_default_context(cafile=str(ca)) if ca.exists() else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context if context else True),
                timeout=aiohttp.ClientTimeout(total=5),
            )
        headers = {"Authorization": f"Bearer {token}"}
        async with self._session.get(url, headers=headers) as response:
            response.raise_for_status()
            return count_slices(await response.json())

    async def aclose(self) -> None:
        """Close the API connection."""
        if self._session is not None:
            await self._session.close()


def count_slices(listing: Mapping[str, Any]) -> Endpoints:
    """Ready and listed endpoints of an EndpointSliceList (each address counted once)."""
    ready: set[str] = set()
    listed: set[str] = set()
    for item in listing.get("items") or ():
        for endpoint in item.get("endpoints") or ():
            addresses = endpoint.get("addresses") or ()
            conditions = endpoint.get("conditions") or {}
            for address in addresses:
                listed.add(address)
                # An absent ``ready`` means ready, as the API documents.
                if conditions.get("ready", True) is not False:
                    ready.add(address)
    return Endpoints(len(ready), len(listed))


def discovery_for(spec: str) -> Discovery:
    """The discovery a ``pool.discovery`` setting names; ValueError for anything else."""
    parts = urlsplit(spec)
    if parts.scheme == "dns" and parts.hostname and parts.port:
        return DnsDiscovery(parts.hostname, parts.port)
    if parts.scheme == "k8s" and parts.netloc and parts.path.strip("/"):
        return KubernetesDiscovery(parts.netloc, parts.path.strip("/"))
    raise ValueError(f"discovery {spec!r}: use dns://name:port or k8s://namespace/service")
