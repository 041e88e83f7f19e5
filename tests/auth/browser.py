"""A browser for `$BROWSER`: `python browser.py URL` returns at once (as a browser does once
it has a tab open) and a child process follows URL with every redirect, cookies kept."""

from __future__ import annotations

import subprocess
import sys

import httpx

if __name__ == "__main__":
    if sys.argv[1:2] == ["--tab"]:
        with httpx.Client(follow_redirects=True, timeout=60) as tab:
            tab.get(sys.argv[2])
    else:
        subprocess.Popen([sys.executable, __file__, "--tab", sys.argv[1]])  # noqa: S603 - ours
