"""Outbound webhook requests that cannot be turned against the network they leave from.

A webhook URL is chosen by a user, and the server POSTs to it: without care that is a way to
reach the loopback interface, the cluster's private network or the cloud metadata service
(server-side request forgery). So every attempt:

- resolves the host itself (`getaddrinfo`) and refuses it if ANY address is loopback, private,
  link-local, multicast, reserved, unspecified, shared (CGNAT), not globally routable, or a
  metadata address, IPv4 embedded in IPv6 included (`::ffff:127.0.0.1`, 6to4, Teredo);
- connects to the address it checked, not to the name: the URL's host is replaced by that
  address, and the `Host` header (and, for https, the TLS server name used for SNI and for
  certificate verification) keep the original name. A second DNS answer (rebinding) is never
  asked for. Connections are not kept alive, so none is reused for another host;
- follows no redirect (a 3xx is a failed attempt), ignores proxy environment variables, has a
  total time budget, and reads at most `MAX_RESPONSE_BYTES` of the answer (undecoded).

`webhook_allow_private_networks` lifts the address rule only (tests, on-premises receivers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 300
# Cloud metadata services: AWS, GCP, Azure, OpenStack (169.254.169.254, link-local anyway),
# AWS over IPv6, Alibaba (100.100.100.200, in the shared range anyway). Named so that a future
# change to the generic rules can never let them through.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# Host names that always mean this machine (RFC 6761).
LOCAL_NAMES = ("localhost", "localhost.")


class RefusedAddress(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one delivery attempt went: the receiver's status, if it answered, and what failed."""

    status: int | None
    error: str | None = None

    @property
    def is_delivered(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def is_forbidden(address: IPAddress) -> bool:
    """Tell whether webhooks must not reach `address` (outside `allow_private_networks`)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if any(v4 is not None and is_forbidden(v4) for v4 in embedded):
            return True
    return (
        address in METADATA_ADDRESSES
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        # Shared address space (100.64.0.0/10), documentation ranges, and anything else that
        # is not on the public internet.
        or not address.is_global
    )


def literal_address(host: str) -> IPAddress | None:
    """Return the address `host` spells, or None for a name. Covers the legacy IPv4 forms the
    resolver accepts too (`127.1`, `2130706433`, `0x7f.0.0.1`)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_host(host: str) -> None:
    """Refuse a host that is a forbidden address, or a name that always means this machine,
    without asking DNS (done when a webhook is made; deliveries check the resolved addresses).

    Raises:
        RefusedAddress: such a host.
    """
    lowered = host.lower()
    if lowered in LOCAL_NAMES or lowered.rstrip(".").endswith(".localhost"):
        raise RefusedAddress(f"{host} is this machine")
    address = literal_address(host)
    if address is not None and is_forbidden(address):
        raise RefusedAddress(f"{address} is not a public address")


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Return the addresses `host` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


class Sender:
    """POSTs webhook deliveries under the rules of this module; one per worker, `aclose()`d."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        allow_private_networks: bool = False,
        resolver: Resolver = resolve,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.allow_private_networks = allow_private_networks
        self.resolver = resolver
        self.max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would connect by name, unpinned
            timeout=timeout_seconds,
            # No connection outlives its request: a pooled one is keyed by the address, and two
            # hosts behind one address must never share a TLS connection made for one of them.
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=verify,  # the system's CAs; a test passes a context trusting its own
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """POST `body` to `url` once; every failure is an `Attempt` with a short error."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._post(url, body, headers)
        except TimeoutError:
            return Attempt(None, f"timed out after {self.timeout_seconds:g} s")
        except RefusedAddress as exc:
            return Attempt(None, f"refused: {exc}")
        except socket.gaierror:
            return Attempt(None, "the host name could not be resolved")
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            return Attempt(None, _short(exc))

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        target = httpx.URL(url)
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        if not self.allow_private_networks:
            check_host(host)
        addresses = await self.resolver(host, port)
        if not addresses:
            raise RefusedAddress(f"{host} has no address")
        if not self.allow_private_networks:
            for address in addresses:
                # Any, not all: a resolver may answer a public and a private address and
                # leave the choice to whoever connects.
                if is_forbidden(address):
                    raise RefusedAddress(f"{host} resolves to {address}, not a public address")
        pinned = target.copy_with(host=str(addresses[0]))
        request = self._client.build_request(
            "POST",
            pinned,
            content=body,
            headers={**headers, "Host": target.netloc.decode("ascii")},
            # TLS: the server name sent (SNI) and checked against the certificate is the
            # URL's host, while the connection goes to the checked address.
            extensions={"sni_hostname": host} if target.scheme == "https" else {},
        )
        response = await self._client.send(request, stream=True)
        try:
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= self.max_response_bytes:
                    break  # enough: the status decides, the rest is never read
        finally:
            await response.aclose()
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(status)
        if 300 <= status < 400:
            return Attempt(status, f"redirects are not followed (answered {status})")
        return Attempt(status, f"the receiver answered {status}")


def _short(exc: BaseException) -> str:
    """Name a failure in a line for the delivery log (never a traceback)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
