"""The dashboard's charts and layouts in a real Chromium, at a phone's width and a desktop's:
text that stays readable, colours that stay apart, actions that stay in reach."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.servers import ServerProcess
from tests.web.browser.test_dashboard import (
    NewBrowser,
    predict,
    sign_up,
    total_after_reload,
    wait,
    with_iris,
)

PHONE = 390


def tick_heights(driver: WebDriver, chart: str) -> list[float]:
    """The rendered heights of a chart's axis labels, in CSS pixels."""
    return [
        float(e.rect["height"]) for e in driver.find_elements(By.CSS_SELECTOR, f"{chart} text.tick")
    ]


def test_chart_text_keeps_its_size_on_a_phone(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)
    predict(driver, ["5.1", "3.5", "1.4", "0.2"])
    analytics = driver.current_url.split("/versions")[0] + "/analytics?days=1"
    wait(driver).until(lambda d: total_after_reload(d, analytics) >= 1)
    desktop = tick_heights(driver, "#requests-chart")

    driver.set_window_size(PHONE, 800)
    driver.get(analytics)
    phone = tick_heights(driver, "#requests-chart")

    assert len(phone) == len(desktop) >= 6
    assert min(phone) >= 10, phone  # 11 px text, not scaled down with the width
    assert max(abs(p - d) for p, d in zip(phone, desktop, strict=True)) < 1
    assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE


# Machado, Oliveira and Fernandes (2009): full protanopia, deuteranopia, tritanopia, applied to
# linear RGB.
CVD = {
    "normal": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "protanopia": (
        (0.152286, 1.052583, -0.204868),
        (0.114503, 0.786281, 0.099216),
        (-0.003882, -0.048116, 1.051998),
    ),
    "deuteranopia": (
        (0.367322, 0.860646, -0.227968),
        (0.280085, 0.672501, 0.047413),
        (-0.011820, 0.042940, 0.968881),
    ),
    "tritanopia": (
        (1.255528, -0.076749, -0.178779),
        (-0.078411, 0.930809, 0.147602),
        (0.004733, 0.691367, 0.303900),
    ),
}


def lab_as_seen(rgb: tuple[int, int, int], vision: str) -> tuple[float, float, float]:
    """CIELAB of an sRGB colour as a person with `vision` sees it."""

    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    lin = [linear(c) for c in rgb]
    r, g, b = (
        min(max(sum(m * c for m, c in zip(row, lin, strict=True)), 0), 1) for row in CVD[vision]
    )
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return (116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z)))


def test_chart_series_colours_stay_apart_for_colour_blind_eyes(
    live_server: ServerProcess, new_browser: NewBrowser
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    # The colours of the ten series a chart can overlay (compare: up to 10), from the stylesheet.
    colours = driver.execute_script(
        """
        const out = [];
        for (let i = 0; i < 10; i++) {
          const key = document.createElement("span");
          key.className = "key s" + i;
          document.body.append(key);
          out.push(getComputedStyle(key, "::before").backgroundColor);
        }
        return out;
        """
    )
    rgb = [tuple(int(v) for v in re.findall(r"\d+", c)[:3]) for c in colours]
    assert len(set(rgb)) == 10, colours
    for vision in CVD:
        seen = [lab_as_seen(c, vision) for c in rgb]  # type: ignore[arg-type]
        closest = min(math.dist(a, b) for a, b in itertools.combinations(seen, 2))
        assert closest >= 12, (vision, closest)  # CIE76 ΔE: clearly different


CHECKBOX_GAPS = """
return [...document.querySelectorAll(arguments[0])].map((label) => {
  const box = label.querySelector("input").getBoundingClientRect();
  const text = [...label.childNodes].find((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
  const range = document.createRange();
  range.selectNodeContents(text);
  const words = range.getBoundingClientRect();
  return {
    name: text.textContent.trim(),
    gap: words.left - box.right,
    offset: Math.abs((words.top + words.bottom) / 2 - (box.top + box.bottom) / 2),
  };
});
"""


def test_scope_checkboxes_sit_beside_their_labels(
    live_server: ServerProcess, new_browser: NewBrowser
) -> None:
    for width in (PHONE, 1280):
        driver = new_browser(width=width, height=800)
        sign_up(driver, live_server)
        driver.get(f"{live_server.url}/api-keys")

        boxes = driver.execute_script(CHECKBOX_GAPS, "#key-scopes label")

        assert [b["name"] for b in boxes] == ["read", "predict", "write"]
        for box in boxes:
            assert 0 <= box["gap"] <= 8, (width, box)  # the text right after its box
            assert box["offset"] <= 4, (width, box)  # on the same line
        # Clicking the word ticks the box.
        read = driver.find_element(By.CSS_SELECTOR, "#key-scopes input[value=read]")
        ticked = read.is_selected()
        driver.find_element(
            By.XPATH, "//fieldset[@id='key-scopes']//label[contains(., 'read')]"
        ).click()
        assert read.is_selected() is not ticked


def test_a_versions_key_fields_and_actions_stay_on_a_phone_screen(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)
    model_url = driver.current_url.split("/versions")[0]
    driver.set_window_size(PHONE, 800)
    driver.get(model_url)
    viewport = driver.execute_script("return document.documentElement.clientWidth")

    row = driver.find_element(By.ID, "version-1")
    wanted = {
        "version": row.find_element(By.LINK_TEXT, "v1"),
        "stage": row.find_element(By.CSS_SELECTOR, ".badge"),
        "created": row.find_element(By.TAG_NAME, "time"),
        **{b.text: b for b in row.find_elements(By.CSS_SELECTOR, "td.actions .button")},
    }

    assert {"Promote", "Staging", "Deprecate", "Archive"} <= set(wanted)
    for name, element in wanted.items():
        box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", element)
        assert element.is_displayed(), name
        assert box["left"] >= 0, (name, box)
        assert box["right"] <= viewport, (name, box, viewport)
    # And the button works where it is: the confirmation page of a promotion.
    wanted["Promote"].click()
    assert "Promote to production?" in driver.find_element(By.TAG_NAME, "h1").text
