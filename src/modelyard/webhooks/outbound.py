"""Outbound webhook requests that cannot be turned against the network they leave from.

A webhook URL is chosen by a user, and the server POSTs to it: without care that is a way to
reach the loopback interface, the cluster's private network or the cloud metadata service
(server-side request forgery). So every attempt:

- resolves the host itself (`getaddrinfo`) and refuses it if ANY address is in one of the
  ranges listed below (`FORBIDDEN_V4`, `FORBIDDEN_V6`: IANA's special-purpose registries, plus
  multicast and IPv6 site-local), an IPv6 address outside global unicast (`2000::/3`), or a
  metadata address; NAT64 (`64:ff9b::/96`) is judged by the IPv4 address it carries;
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

# The ranges a webhook may never reach, listed rather than asked of `ipaddress` (whose
# `is_global` calls site-local `fec0::/10` and 6to4 around a private address global, and whose
# answers change between Python releases). From IANA's IPv4 and IPv6 Special-Purpose Address
# Registries (every entry, the globally reachable anycast ones too: no webhook receiver lives
# there), the multicast registries, and the IPv6 Address Space registry.
FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network" (RFC 791)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link-local, cloud metadata (RFC 3927)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments: DS-Lite, PCP/TURN anycast, NAT64 discovery
        "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
        "192.31.196.0/24",  # AS112-v4 (RFC 7535)
        "192.52.193.0/24",  # AMT (RFC 7450)
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
        "192.168.0.0/16",  # private (RFC 1918)
        "192.175.48.0/24",  # direct delegation AS112 service (RFC 7534)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # documentation TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved, and the limited broadcast 255.255.255.255 (RFC 1112, 919)
    )
)
# Only 2000::/3 is global unicast; what lies outside it (loopback, unspecified, IPv4-mapped,
# -compatible and -translated, discard-only 100::/64, local NAT64 64:ff9b:1::/48, SRv6 SIDs
# 5f00::/16, ULA, link-local, site-local, multicast) is refused by that rule alone, and is
# listed here too so that the list reads as the whole policy.
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
# The well-known NAT64 prefix (RFC 6052): an IPv6-only host's DNS64 answers it for public IPv4
# hosts, so it is judged by the IPv4 address in its last 32 bits.
NAT64_V6 = ipaddress.IPv6Network("64:ff9b::/96")
FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified (RFC 4291)
        "::1/128",  # loopback (RFC 4291)
        "::/96",  # IPv4-compatible, deprecated (RFC 4291)
        "::ffff:0:0/96",  # IPv4-mapped (RFC 4291): a connection to it is IPv4
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "100:0:0:1::/64",  # dummy prefix (RFC 9780)
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID, AMT
        "2001:db8::/32",  # documentation (RFC 3849)
        "2002::/16",  # 6to4 (RFC 3056), deprecated: refused whatever IPv4 it carries
        "2620:4f:8000::/48",  # direct delegation AS112 service (RFC 7534)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing SIDs (RFC 9602)
        "fc00::/7",  # unique local, fd00:ec2::254 among them (RFC 4193)
        "fe80::/10",  # link-local (RFC 4291)
        "fec0::/10",  # site-local, deprecated (RFC 3879); `is_global` calls it global
        "ff00::/8",  # multicast (RFC 4291)
    )
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
    if address in METADATA_ADDRESSES:
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in network for network in FORBIDDEN_V4)
    if address in NAT64_V6:
        return is_forbidden(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address not in GLOBAL_UNICAST_V6 or any(address in network for network in FORBIDDEN_V6)


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
