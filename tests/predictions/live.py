"""A real HTTP server for clients that cannot use an in-process transport (tritonclient)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from modelyard.app import create_app
from modelyard.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` with uvicorn in a thread; yield its `host:port`."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        # Polling a flag, not timing: the loop ends when the server has bound its socket.
        tick = threading.Event()
        while not server.started and thread.is_alive():
            tick.wait(0.01)
        if not server.started:
            raise RuntimeError("the test server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
