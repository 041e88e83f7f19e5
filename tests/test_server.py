"""`modelyard serve` at the socket level: head size limit, head, body and idle timeouts,
the concurrency limit. Every wait is bounded by a socket timeout; nothing asserts on time."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import ServerProcess, running_server

# Far above every timeout the servers below are given: a wait that reaches it is a failure.
READ_TIMEOUT_SECONDS = 20.0


def connect(server: ServerProcess) -> socket.socket:
    """A connection to `server` whose every read is bounded by READ_TIMEOUT_SECONDS."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_SECONDS)
    sock.settimeout(READ_TIMEOUT_SECONDS)
    return sock


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a small head limit and short timeouts (the tests wait for them)."""
    with running_server(
        tmp_path_factory.mktemp("edge"),
        max_header_bytes="4096",
        header_timeout_seconds="0.5",
        body_timeout_seconds="0.5",
        idle_timeout_seconds="0.5",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that takes two connections at once, idle ones kept long enough to count."""
    with running_server(
        tmp_path_factory.mktemp("busy"), max_concurrency="2", idle_timeout_seconds="60"
    ) as server:
        yield server


def read_response(sock: socket.socket) -> bytes:
    """Read until the server closes the connection (bounded by the socket timeout)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_one_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length body from a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    return status, headers, body


def test_an_oversized_head_is_refused_with_431(server: ServerProcess) -> None:
    with connect(server) as sock:
        # No end of head: the server must refuse on size, not wait for the rest.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        data = read_response(sock)

    status, headers, body = split_response(data)
    assert status == 431
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 431


def test_a_head_within_the_limit_is_served(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n")
        status, _, body = read_one_response(sock)

    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_a_body_arriving_with_its_head_does_not_count_as_head(server: ServerProcess) -> None:
    body = json.dumps({"email": "a@b.co", "password": "x" * 20_000}).encode()
    request = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with connect(server) as sock:
        sock.sendall(request)  # one write: head and body reach the server together
        status, _, _ = read_one_response(sock)

    assert status in (401, 422)


def test_a_half_sent_head_is_closed_with_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        data = read_response(sock)

    status, headers, body = split_response(data)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["detail"] == "the request head was not received in time"


def test_a_stalled_body_is_closed_with_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"email": '
        )
        data = read_response(sock)

    status, _, body = split_response(data)
    assert status == 408
    assert json.loads(body)["detail"] == "the request body stalled"


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        assert read_response(sock) == b""


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_one_response(sock)
        rest = read_response(sock)

    assert status == 200
    assert headers.get("connection") != "close"
    assert rest == b""


def test_requests_past_the_concurrency_limit_answer_503(busy_server: ServerProcess) -> None:
    with connect(busy_server) as first:
        # One whole exchange: the server holds the first connection, idle, for a minute. The
        # second connects only then (uvicorn counts open connections, so two open before the
        # first request would already refuse it).
        first.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_one_response(first)[0] == 200
        with connect(busy_server) as second:
            second.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_response(second)

    status, headers, body = split_response(data)
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 503


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the default proxy settings and a login limit of two a minute."""
    with running_server(
        tmp_path_factory.mktemp("limited"), auth_rate_limit_per_minute="2"
    ) as server:
        yield server


def test_a_spoofed_forwarded_for_does_not_dodge_the_login_limit(
    limited_server: ServerProcess,
) -> None:
    statuses = []
    with httpx.Client(base_url=limited_server.url, timeout=10) as client:
        for n in range(3):
            response = client.post(
                "/api/v1/auth/login",
                json={"email": f"user{n}@example.com", "password": "wrong-password"},
                headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
            )
            statuses.append(response.status_code)

    assert statuses == [401, 401, 429]
