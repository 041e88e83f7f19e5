"""Every shell and Python block of the README, the site's pages and the client's README, run as
written against a live `modelyard serve`: what a reader copies works.

The README's walkthrough runs against a fresh server of its own, as a new user's would. Then the
site's pages, in the order of its nav, and the client's README run against another fresh server,
in one working folder, as someone following the site along on one machine.
Each page's ```bash/```sh and ```python blocks run in order in one shell (a Python block as
`python3 - <<EOF`, with the shell's exported variables): variables live for the page, files for
the whole run. Blocks that need another host (Kubernetes, Docker) carry an HTML comment
`<!-- no-run: why -->` on the line before them and are skipped.

The shell runs with `set -euo pipefail`, and curl with `fail-with-body` (a `.curlrc` in the
shell's HOME), so a command or a request that fails fails the page, naming the page, the block
and the output. The server is the one a reader starts (`modelyard serve`) with two test
settings: cheap password hashing and no limit on sign-ins per address (the pages sign in far
more often than a person would within a minute).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.servers import ServerProcess, running_server

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = {"bash": "shell", "sh": "shell", "python": "python"}
FENCE = re.compile(r"^```(\w*)\s*$")
NO_RUN = re.compile(r"^<!--\s*no-run:\s*\S.*-->\s*$")
PAGE_TIMEOUT_SECONDS = 300
BASH = shutil.which("bash") or "/bin/bash"


@dataclass(frozen=True)
class Block:
    number: int  # 1-based, among the page's blocks (skipped ones included)
    line: int
    language: str  # "shell" or "python"
    code: str
    skipped: bool


def blocks(text: str) -> list[Block]:
    """The page's fenced shell and Python blocks, in order."""
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match.group(1):
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        language = RUN_LANGUAGES.get(match.group(1))
        if language:
            previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            found.append(
                Block(
                    number=len(found) + 1,
                    line=start + 1,
                    language=language,
                    code="\n".join(lines[start + 1 : end]),
                    skipped=bool(NO_RUN.match(previous.strip())),
                )
            )
        index = end + 1
    return found


def nav_pages(nav: list[object]) -> Iterator[str]:
    for entry in nav:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                if isinstance(value, str):
                    yield value
                else:
                    yield from nav_pages(value)


def site_pages() -> list[Path]:
    """The site's pages in nav order (generated ones have no file), then the client's README."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    site = [ROOT / "docs" / page for page in nav_pages(config["nav"])]
    return [*(page for page in site if page.exists()), ROOT / "client" / "README.md"]


def pages() -> list[Path]:
    return [ROOT / "README.md", *site_pages()]


def script(page: Path) -> str:
    """One shell script running the page's blocks in order, announcing each on stderr."""
    parts = ["set -euo pipefail"]
    for block in blocks(page.read_text()):
        if block.skipped:
            continue
        parts.append(f"echo '::block {block.number} (line {block.line})::' >&2")
        if block.language == "python":
            parts.append(
                f"python3 - <<'MODELYARD_DOCS_PYTHON'\n{block.code}\nMODELYARD_DOCS_PYTHON"
            )
        else:
            parts.append(block.code)
    return "\n".join(parts) + "\n"


def test_every_page_has_its_blocks_found() -> None:
    """The extraction sees fences as a reader does: every ``` opens or closes a block, and
    each page's count of runnable blocks matches its fences."""
    for page in pages():
        text = page.read_text()
        fences = [line for line in text.splitlines() if line.startswith("```")]
        assert len(fences) % 2 == 0, f"{page}: an unclosed code fence"
        languages = [line.removeprefix("```").strip() for line in fences[::2]]
        runnable = [language for language in languages if language in RUN_LANGUAGES]
        assert len(blocks(text)) == len(runnable), page


def reader_home(folder: Path) -> Path:
    """A reader's working folder and HOME (their client login, their .curlrc)."""
    home = folder / "reader"
    home.mkdir()
    (home / ".curlrc").write_text("fail-with-body\nshow-error\n")
    return home


def test_readme_walkthrough_runs(tmp_path: Path) -> None:
    with running_server(tmp_path / "server", auth_rate_limit_per_minute="0") as server:
        run_page(ROOT / "README.md", server, reader_home(tmp_path))


@pytest.fixture(scope="module")
def site_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("docs-server")
    with running_server(folder, auth_rate_limit_per_minute="0") as server:
        yield server


@pytest.fixture(scope="module")
def site_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reader_home(tmp_path_factory.mktemp("docs-reader"))


@pytest.mark.parametrize("page", site_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_site_page_runs(page: Path, site_server: ServerProcess, site_reader: Path) -> None:
    run_page(page, site_server, site_reader)


def run_page(page: Path, server: ServerProcess, reader: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")},
        "HOME": str(reader),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "MODELYARD_URL": server.url,
        # Server commands in the blocks (`modelyard create-admin`) reach the server's database,
        # as they do for a reader in the folder `make run` serves from.
        "MODELYARD_DATA_DIR": server.env["MODELYARD_DATA_DIR"],
        # This checkout's code for the blocks' `modelyard` and Python, as for the server.
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "client" / "src")]),
    }
    result = subprocess.run(  # noqa: S603 - our own pages
        [BASH, "-c", script(page)],
        cwd=reader,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        markers = re.findall(r"::block (\d+ \(line \d+\))::", result.stderr)
        where = f"block {markers[-1]}" if markers else "before its first block"
        pytest.fail(
            f"{page.relative_to(ROOT)}: {where} exited {result.returncode}\n"
            f"--- stdout (last 4000 characters)\n{result.stdout[-4000:]}\n"
            f"--- stderr (last 4000 characters)\n{result.stderr[-4000:]}"
        )
