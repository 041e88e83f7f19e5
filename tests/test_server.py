"""`modelyard serve` at the socket level: head size limit, head, body and idle timeouts,
the concurrency limit. Every wait is bounded by a socket timeout; nothing asserts on time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import modelyard
from tests.test_cli import CHEAP_ARGON2, SERVER_START_TIMEOUT_SECONDS

# Far above every timeout the servers below are given: a wait that reaches it is a failure.
READ_TIMEOUT_SECONDS = 20.0
SRC = str(Path(modelyard.__file__).resolve().parents[1])


@dataclass
class Server:
    port: int
    log_path: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=READ_TIMEOUT_SECONDS)
        sock.settimeout(READ_TIMEOUT_SECONDS)
        return sock


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start_server(tmp_path: Path, **settings: str) -> Iterator[Server]:
    """Run `modelyard serve` with these MODELYARD_* settings until the generator is closed."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        **CHEAP_ARGON2,
        "MODELYARD_DATA_DIR": str(tmp_path / "data"),
        # This checkout's code, whatever the interpreter has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        **{f"MODELYARD_{name.upper()}": value for name, value in settings.items()},
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "modelyard", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health in time:\n{log_path.read_text()}")
            time.sleep(0.1)  # polling interval, not an assertion
        yield Server(port, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a small head limit and short timeouts (the tests wait for them)."""
    yield from start_server(
        tmp_path_factory.mktemp("edge"),
        max_header_bytes="4096",
        header_timeout_seconds="0.5",
        body_timeout_seconds="0.5",
        idle_timeout_seconds="0.5",
    )


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that takes two connections at once, idle ones kept long enough to count."""
    yield from start_server(
        tmp_path_factory.mktemp("busy"), max_concurrency="2", idle_timeout_seconds="60"
    )


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


def test_an_oversized_head_is_refused_with_431(server: Server) -> None:
    with server.connect() as sock:
        # No end of head: the server must refuse on size, not wait for the rest.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        data = read_response(sock)

    status, headers, body = split_response(data)
    assert status == 431
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 431


def test_a_head_within_the_limit_is_served(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n")
        status, _, body = read_one_response(sock)

    assert status == 200
    assert json.loads(body) == {"status": "ok"}


def test_a_body_arriving_with_its_head_does_not_count_as_head(server: Server) -> None:
    body = json.dumps({"email": "a@b.co", "password": "x" * 20_000}).encode()
    request = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with server.connect() as sock:
        sock.sendall(request)  # one write: head and body reach the server together
        status, _, _ = read_one_response(sock)

    assert status in (401, 422)


def test_a_half_sent_head_is_closed_with_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        data = read_response(sock)

    status, headers, body = split_response(data)
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["detail"] == "the request head was not received in time"


def test_a_stalled_body_is_closed_with_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"email": '
        )
        data = read_response(sock)

    status, _, body = split_response(data)
    assert status == 408
    assert json.loads(body)["detail"] == "the request body stalled"


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with server.connect() as sock:
        assert read_response(sock) == b""


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_one_response(sock)
        rest = read_response(sock)

    assert status == 200
    assert headers.get("connection") != "close"
    assert rest == b""


def test_requests_past_the_concurrency_limit_answer_503(busy_server: Server) -> None:
    with busy_server.connect() as first, busy_server.connect() as second:
        # One whole exchange: the server holds the first connection, idle, for a minute.
        first.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_one_response(first)[0] == 200
        second.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_response(second)

    status, headers, body = split_response(data)
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 503


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default proxy settings and a login limit of two a minute."""
    yield from start_server(tmp_path_factory.mktemp("limited"), auth_rate_limit_per_minute="2")


def test_a_spoofed_forwarded_for_does_not_dodge_the_login_limit(limited_server: Server) -> None:
    statuses = []
    with httpx.Client(base_url=f"http://127.0.0.1:{limited_server.port}", timeout=10) as client:
        for n in range(3):
            response = client.post(
                "/api/v1/auth/login",
                json={"email": f"user{n}@example.com", "password": "wrong-password"},
                headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
            )
            statuses.append(response.status_code)

    assert statuses == [401, 401, 429]
