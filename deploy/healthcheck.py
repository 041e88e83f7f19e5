#!/usr/bin/env python3
"""Container health check: exit 0 when this container's Modelyard answers GET /health with 200.

Installed in the image as `modelyard-healthcheck` (Dockerfile HEALTHCHECK, compose). Standard
library only: the slim image has no curl.
"""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 4.0


def main() -> int:
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


if __name__ == "__main__":
    sys.exit(main())
