"""Comparing runs and versions in a real Chromium against a live server: the experiments list
sorted and filtered by a metric, runs and versions ticked and compared side by side.

Each test writes a screenshot of the compare page to docs/screenshots/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.servers import ServerProcess
from tests.web.browser.test_dashboard import (
    NewBrowser,
    api_session,
    shoot,
    sign_up,
    submit,
    text_of,
    wait,
)

RUNS = {  # name: (C, loss by step, accuracy)
    "lr-c1": (1.0, [0.9, 0.5, 0.3], 0.91),
    "lr-c01": (0.1, [0.9, 0.7, 0.6], 0.84),
    "lr-c10": (10.0, [0.9, 0.4, 0.35], 0.72),
}


def run_names(driver: WebDriver) -> list[str]:
    return [str(a.text) for a in driver.find_elements(By.CSS_SELECTOR, "#experiments tbody td a")]


def rows_by_key(driver: WebDriver) -> dict[str, tuple[bool, list[str]]]:
    """Each row of the comparison: whether it is marked as differing, and its cells."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#comparison tbody tr[data-key]"):
        marked = bool(row.find_elements(By.CSS_SELECTOR, "th .badge.differs"))
        cells = [str(td.text) for td in row.find_elements(By.TAG_NAME, "td")]
        rows[str(row.get_attribute("data-key"))] = (marked, cells)
    return rows


def line_colours(driver: WebDriver, chart: str) -> list[str]:
    return [
        str(driver.execute_script("return getComputedStyle(arguments[0]).stroke", line))
        for line in driver.find_elements(By.CSS_SELECTOR, f"{chart} polyline.line")
    ]


def test_sort_filter_and_compare_runs(
    live_server: ServerProcess, new_browser: NewBrowser, screenshots: Path
) -> None:
    driver = new_browser()
    api, headers = api_session(live_server, sign_up(driver, live_server))
    for name, (c, losses, accuracy) in RUNS.items():
        created = httpx.post(
            f"{api}/experiments",
            json={"name": name, "parameters": {"C": c, "solver": "lbfgs"}},
            headers=headers,
        ).json()
        points = [{"key": "loss", "step": s, "value": v} for s, v in enumerate(losses)]
        points.append({"key": "accuracy", "step": 2, "value": accuracy})
        logged = httpx.post(
            f"{api}/experiments/{created['id']}/metrics", json=points, headers=headers
        )
        assert logged.status_code == 201, logged.text

    driver.get(f"{live_server.url}/experiments")
    headings = [str(th.text) for th in driver.find_elements(By.CSS_SELECTOR, "#experiments th")]
    assert {"C", "solver", "accuracy", "loss"} <= set(headings)
    submit(driver, "#experiments th.metric a[href*='metrics.accuracy']")
    assert run_names(driver) == ["lr-c1", "lr-c01", "lr-c10"]
    submit(driver, "#experiments th.metric a[href*='metrics.accuracy']")  # again: ascending
    assert run_names(driver) == ["lr-c10", "lr-c01", "lr-c1"]
    driver.find_element(By.ID, "filter").send_keys("metrics.accuracy>=0.8")
    submit(driver, "form[role=search] button[type=submit]")
    assert run_names(driver) == ["lr-c01", "lr-c1"]

    for box in driver.find_elements(By.CSS_SELECTOR, "#experiments input[name=id]"):
        box.click()
    submit(driver, "#compare-selected")
    assert "/compare/runs?" in driver.current_url
    headers_text = text_of(driver, "#comparison thead")
    assert "lr-c01" in headers_text
    assert "lr-c1" in headers_text
    rows = rows_by_key(driver)
    assert rows["C"] == (True, ["0.1", "1"])
    assert rows["solver"] == (False, ["lbfgs", "lbfgs"])
    assert rows["accuracy"] == (True, ["0.84", "0.91"])
    differing = driver.find_element(By.CSS_SELECTOR, "#comparison tr[data-key='C'] .badge.differs")
    assert differing.is_displayed()
    # The loss chart overlays both runs, in two colours.
    charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart")
    loss = next(
        c for c in charts if c.find_element(By.TAG_NAME, "figcaption").text.startswith("loss")
    )
    colours = line_colours(driver, f"#{loss.get_attribute('id')}")
    assert len(colours) == 2
    assert colours[0] != colours[1]
    shoot(driver, screenshots / "compare-runs.png")


def test_compare_versions_from_a_model_page(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path, screenshots: Path
) -> None:
    driver = new_browser()
    api, headers = api_session(live_server, sign_up(driver, live_server))
    versions: list[dict[str, Any]] = []
    for accuracy, c in ((0.93, 1.0), (0.95, 0.5)):
        with iris_skops.open("rb") as f:
            response = httpx.post(
                f"{api}/models/upload",
                data={
                    "name": "iris",
                    "metrics": json.dumps({"accuracy": accuracy}),
                    "hyperparameters": json.dumps({"C": c, "max_iter": 200}),
                },
                files={"file": ("iris.skops", f, "application/octet-stream")},
                headers=headers,
                timeout=60,
            )
        assert response.status_code == 201, response.text
        versions.append(response.json())
    predicted = httpx.post(
        f"{api}/predict/iris?version=1", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, headers=headers
    )
    assert predicted.status_code == 200, predicted.text

    driver.get(f"{live_server.url}/models/{versions[0]['model_id']}")
    for box in driver.find_elements(By.CSS_SELECTOR, "#compare-versions input[name=id]"):
        box.click()
    submit(driver, "#compare-versions button[type=submit]")
    assert "/compare/versions?" in driver.current_url

    def served(d: WebDriver) -> bool:
        """The prediction log writes in the background: reload until the rollup counts it."""
        d.refresh()
        return rows_by_key(d)["requests"][1] == ["1", "0"]

    wait(driver).until(served)
    rows = rows_by_key(driver)
    assert rows["accuracy"] == (True, ["0.93", "0.95"])
    assert rows["C"] == (True, ["1", "0.5"])
    assert rows["max_iter"] == (False, ["200", "200"])
    assert rows["requests"] == (True, ["1", "0"])
    assert rows["failures"] == (False, ["0", "0"])
    # No reference yet, and too few served rows to make one.
    assert rows["drift (24 h)"] == (False, ["no reference", "no reference"])
    assert "iris v1" in text_of(driver, "#comparison thead")
    shoot(driver, screenshots / "compare-versions.png")
