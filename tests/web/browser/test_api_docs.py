"""`/docs` in a real Chromium: Swagger UI reads the OpenAPI 3.1 document and lists the
operations, with every file from the server itself (no CDN)."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.servers import ServerProcess

WAIT_SECONDS = 30  # a bound on the wait, not a timing assertion


def operations(driver: Any) -> set[str]:
    """The operations Swagger UI lists, as "METHOD /path"."""
    found = set()
    for block in driver.find_elements(By.CSS_SELECTOR, ".opblock .opblock-summary"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
            "data-path"
        )
        found.add(f"{method.upper()} {path}")
    return found


def test_docs_render_the_operations_offline(
    live_server: ServerProcess, new_browser: Any, screenshots: Any
) -> None:
    driver = new_browser()
    driver.get(f"{live_server.url}/docs")
    # Swagger UI 4 stops at "Unable to render this definition" and lists nothing.
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".opblock") or "Unable to render" in d.page_source
        )
    )
    assert "Unable to render this definition" not in driver.page_source
    listed = operations(driver)
    assert {"POST /api/v1/auth/login", "GET /api/v1/models", "GET /health/ready"} <= listed, listed
    # The version Swagger UI shows is the server's, read from its OpenAPI 3.1 document.
    assert "OAS 3.1" in driver.find_element(By.CSS_SELECTOR, ".info").text
    # Offline: every file the page loaded came from the server.
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded
    assert all(url.startswith(live_server.url + "/") for url in loaded), loaded
    driver.save_screenshot(str(screenshots / "api-docs.png"))
