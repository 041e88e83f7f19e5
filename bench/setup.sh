#!/usr/bin/env bash
# What `make bench` needs besides the project's own venv: wrk (Debian package) and MLServer 1.7.1
# in its own virtual environment, bench/.venv-mlserver (built once; delete it to rebuild).
# A failed MLServer install is reported, not fatal: the bench then skips MLServer.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

if ! command -v wrk >/dev/null; then
    echo "bench: installing wrk with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

stamp=.venv-mlserver/.installed
if [ ! -f "$stamp" ]; then
    echo "bench: creating .venv-mlserver (mlserver 1.7.1, mlserver-sklearn 1.7.1, uvloop 0.21.0)"
    # uvloop 0.21.0: newer releases crash MLServer's workers (SeldonIO/MLServer#2286).
    if { test -x .venv-mlserver/bin/python || "$PYTHON" -m venv .venv-mlserver; } &&
        .venv-mlserver/bin/python -m pip install --quiet --upgrade pip >.venv-mlserver.log 2>&1 &&
        .venv-mlserver/bin/python -m pip install --quiet \
            "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop==0.21.0" >>.venv-mlserver.log 2>&1
    then
        touch "$stamp"
    else
        echo "bench: MLServer could not be installed (see bench/.venv-mlserver.log); it will be skipped" >&2
    fi
fi
