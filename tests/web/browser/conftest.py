"""A live server and real Chromium browsers (Debian's `chromium` and `chromium-driver`) for the
dashboard's browser tests. Nothing is downloaded: the browser and driver are the system's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.browser import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.servers import CHEAP_ARGON2, SRC, ServerProcess, running_server
from tests.support.services import service_missing

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"

Browser = Callable[..., object]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `modelyard serve` on SQLite with an admin account, for the whole module."""
    folder = tmp_path_factory.mktemp("browser-server")
    settings = {"auth_rate_limit_per_minute": "0", "password_failures_per_account": "0"}
    with running_server(folder, **settings) as server:
        env = {
            **os.environ,
            **CHEAP_ARGON2,
            "MODELYARD_DATA_DIR": str(folder / "data"),
            "PYTHONPATH": SRC,
            "MODELYARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "modelyard", "create-admin", "--email", ADMIN_EMAIL],
            env=env,
            cwd=folder,
            check=True,
            capture_output=True,
        )
        yield server


@pytest.fixture(scope="module")
def new_browser() -> Iterator[Callable[..., object]]:
    """Return a function that starts a headless Chromium (its own profile); all quit at the end."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        service_missing(
            "chromium and chromium-driver",
            CHROMIUM,
            FileNotFoundError("apt-get install chromium chromium-driver"),
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[webdriver.Chrome] = []
    profiles: list[str] = []

    def start(width: int = 1280, height: int = 900) -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="modelyard-chromium-")
        profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        # A dialog stays open for the test to find, rather than being dismissed for it.
        options.unhandled_prompt_behavior = "ignore"
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
