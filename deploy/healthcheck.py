#!/usr/bin/env python3
"""Container health check.

    modelyard-healthcheck           exit 0 when this container's server answers GET /health with 200
    modelyard-healthcheck worker    exit 0 when this container's `modelyard worker` touched its
                                    heartbeat file within the last 60 s

Installed in the image as `modelyard-healthcheck` (Dockerfile HEALTHCHECK, compose, Kubernetes
exec probes). Standard library only: the slim image has no curl.
"""

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 4.0
# The worker touches the file every 10 s (modelyard.jobs.queue.HEARTBEAT_SECONDS).
HEARTBEAT_MAX_AGE_SECONDS = 60.0


def check_server() -> int:
    port = os.environ.get("MODELYARD_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    # No proxy: an HTTP(S)_PROXY in the container's environment must not carry a loopback check
    # to another host.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def check_worker() -> int:
    # The same default as the worker's setting (MODELYARD_WORKER_HEARTBEAT_FILE).
    default = os.path.join(tempfile.gettempdir(), "modelyard-worker.heartbeat")
    path = os.environ.get("MODELYARD_WORKER_HEARTBEAT_FILE") or default
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as exc:
        print(f"unhealthy: no worker heartbeat at {path}: {exc.strerror}", file=sys.stderr)
        return 1
    if age > HEARTBEAT_MAX_AGE_SECONDS:
        print(f"unhealthy: the worker's last heartbeat was {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv == ["worker"]:
        return check_worker()
    if argv:
        print("usage: modelyard-healthcheck [worker]", file=sys.stderr)
        return 2
    return check_server()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
