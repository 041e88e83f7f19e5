"""Outbound requests: non-public addresses refused after resolution (any of them), the
connection pinned to the address checked with the host name kept (Host header, TLS server
name and certificate), and the address rule lifted only by the setting."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelyard.webhooks.outbound import (
    FORBIDDEN_V4,
    FORBIDDEN_V6,
    IPAddress,
    RefusedAddress,
    Sender,
    check_host,
    is_forbidden,
    literal_address,
)
from tests.webhooks.receiver import Receiver

BODY = b'{"type": "model.deleted"}'
HEADERS = {"content-type": "application/json"}


class FakeDns:
    """A resolver answering fixed addresses for every name, counting the questions."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = [ipaddress.ip_address(a) for a in addresses]
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        return self.addresses


@pytest.fixture
async def strict() -> AsyncIterator[Sender]:
    sender = Sender(timeout_seconds=5)
    yield sender
    await sender.aclose()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",  # shared (CGNAT)
        "169.254.169.254",  # cloud metadata
        "169.254.1.1",
        "0.0.0.0",  # noqa: S104 - an address refused, not one bound
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.10",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
        # What `ipaddress.is_global` calls global, or did in some Python release:
        "fec0::1",  # site-local (deprecated)
        "feff:ffff::1",  # the end of site-local
        "2002:808:808::1",  # 6to4, deprecated, around a public address too
        "2001::1",  # Teredo
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo around 192.0.2.45
        "3fff::1",  # documentation (RFC 9637)
        "5f00::1",  # segment routing
        "::808:808",  # IPv4-compatible
        "::ffff:8.8.8.8",  # IPv4-mapped: a connection to it is IPv4, whatever it carries
        "64:ff9b:1::a00:1",  # local-use NAT64
        "100::1",  # discard-only
        "100:0:0:1::1",  # dummy prefix
        "2001:db8::1",  # documentation
        "4000::1",  # outside global unicast (2000::/3): unassigned
        "192.0.0.9",  # PCP anycast
        "192.88.99.1",  # 6to4 relay anycast
        "198.18.0.1",  # benchmarking
        "198.51.100.7",  # documentation
        "203.0.113.7",  # documentation
        "192.31.196.1",  # AS112
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("network", [*FORBIDDEN_V4, *FORBIDDEN_V6])
def test_every_listed_range_is_forbidden_from_its_first_to_its_last_address(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> None:
    assert is_forbidden(network[0])
    assert is_forbidden(network[-1])


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "64:ff9b::808:808",  # NAT64 around 8.8.8.8: how an IPv6-only host reaches it (DNS64)
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
    ],
)
def test_legacy_and_bracketed_literals_are_read_as_the_resolver_reads_them(
    host: str, address: str
) -> None:
    assert literal_address(host) == ipaddress.ip_address(address)
    with pytest.raises(RefusedAddress):
        check_host(host)


def test_names_are_not_addresses() -> None:
    for host in ("example.com", "cafe.be", "deadbeef", "hooks.example.test"):
        assert literal_address(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/hook",
        "http://LOCALHOST.:{port}/hook",
        "http://127.0.0.1:{port}/hook",
        "http://127.1:{port}/hook",
        "http://10.0.0.1:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
    ],
)
async def test_a_non_public_address_is_refused_before_connecting(
    strict: Sender, receiver: Receiver, url: str
) -> None:
    attempt = await strict.post(url.format(port=receiver.port), BODY, HEADERS)

    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("refused: ")
    assert receiver.connections == 0


async def test_a_name_that_resolves_to_loopback_is_refused(receiver: Receiver) -> None:
    dns = FakeDns("127.0.0.1")
    sender = Sender(timeout_seconds=5, resolver=dns)
    try:
        attempt = await sender.post(f"http://hooks.example.test:{receiver.port}/", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert (
        attempt.error == "refused: hooks.example.test resolves to 127.0.0.1, not a public address"
    )
    assert dns.asked == ["hooks.example.test"]
    assert receiver.connections == 0


async def test_one_private_address_among_public_ones_is_enough_to_refuse(
    receiver: Receiver,
) -> None:
    sender = Sender(timeout_seconds=5, resolver=FakeDns("93.184.215.14", "10.0.0.7"))
    try:
        attempt = await sender.post(f"http://hooks.example.test:{receiver.port}/", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert attempt.error is not None
    assert "10.0.0.7" in attempt.error


async def test_a_name_that_resolves_to_site_local_ipv6_is_refused(receiver: Receiver) -> None:
    sender = Sender(timeout_seconds=5, resolver=FakeDns("fec0::5"))
    try:
        attempt = await sender.post(f"http://hooks.example.test:{receiver.port}/", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert attempt.error == "refused: hooks.example.test resolves to fec0::5, not a public address"
    assert receiver.connections == 0


async def test_an_unresolvable_host_is_a_failed_attempt(strict: Sender) -> None:
    attempt = await strict.post("http://no-such-host.invalid/hook", BODY, HEADERS)

    assert attempt == type(attempt)(None, "the host name could not be resolved")


async def test_the_connection_goes_to_the_checked_address_under_the_urls_host_name(
    receiver: Receiver,
) -> None:
    dns = FakeDns("127.0.0.1")
    sender = Sender(timeout_seconds=5, allow_private_networks=True, resolver=dns)
    try:
        attempt = await sender.post(
            f"http://hooks.example.test:{receiver.port}/in?x=1", BODY, HEADERS
        )
    finally:
        await sender.aclose()

    assert (attempt.status, attempt.error) == (200, None)
    [got] = receiver.received
    assert got.path == "/in?x=1"
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert got.body == BODY
    assert dns.asked == ["hooks.example.test"]  # asked once: no second answer can swap it


async def test_the_setting_lets_deliveries_reach_loopback(receiver: Receiver) -> None:
    sender = Sender(timeout_seconds=5, allow_private_networks=True)
    try:
        attempt = await sender.post(f"http://localhost:{receiver.port}/hook", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert attempt.is_delivered
    assert len(receiver.received) == 1


async def test_proxy_variables_are_ignored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would connect to the host by name, around the checked address.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    sender = Sender(timeout_seconds=5, allow_private_networks=True)
    try:
        attempt = await sender.post(f"{receiver.url}/hook", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert attempt.is_delivered


# --- TLS: pinned to the address, verified for the name -----------------------------------------


def _certificates(folder: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for `name` from a CA of the test's own, and a client
    context trusting only that CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "leaf.pem", folder / "leaf.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


@pytest.fixture
async def tls_receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, ssl.SSLContext, list[str]]]:
    server_context, client_context = _certificates(tmp_path, "hooks.example.test")
    names: list[str] = []

    def note_name(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(str(name))

    server_context.sni_callback = note_name
    receiver = Receiver(tls=server_context)
    await receiver.start()
    yield receiver, client_context, names
    await receiver.aclose()


async def test_https_is_pinned_to_the_address_and_verified_for_the_name(
    tls_receiver: tuple[Receiver, ssl.SSLContext, list[str]],
) -> None:
    receiver, trust, names = tls_receiver
    dns = FakeDns("127.0.0.1")
    sender = Sender(timeout_seconds=5, allow_private_networks=True, resolver=dns, verify=trust)
    try:
        attempt = await sender.post(f"https://hooks.example.test:{receiver.port}/h", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert (attempt.status, attempt.error) == (200, None)
    assert names == ["hooks.example.test"]  # the server name sent: the URL's, not the address
    [got] = receiver.received
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"


async def test_https_to_a_name_the_certificate_does_not_cover_fails(
    tls_receiver: tuple[Receiver, ssl.SSLContext, list[str]],
) -> None:
    receiver, trust, _ = tls_receiver
    sender = Sender(
        timeout_seconds=5, allow_private_networks=True, resolver=FakeDns("127.0.0.1"), verify=trust
    )
    try:
        attempt = await sender.post(f"https://evil.example.test:{receiver.port}/h", BODY, HEADERS)
    finally:
        await sender.aclose()

    assert attempt.status is None
    assert attempt.error is not None
    assert "certificate" in attempt.error.lower()
    assert receiver.received == []
