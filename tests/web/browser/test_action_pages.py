"""The dashboard's files, new batch job, drift reference, traffic, webhooks and audit pages in a
real Chromium against a live server: the flows a person goes through, from the navigation on."""

from __future__ import annotations

from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from tests.jobs.helpers import csv_bytes, iris_rows
from tests.support.servers import ServerProcess
from tests.web.browser.test_dashboard import (
    NewBrowser,
    api_session,
    sign_up,
    submit,
    text_of,
    upload,
    wait,
)


def test_upload_a_file_score_it_and_make_it_the_drift_reference(
    live_server: ServerProcess,
    new_browser: NewBrowser,
    iris_skops: Path,
    tmp_path: Path,
) -> None:
    driver = new_browser()
    email = sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "scored-iris")
    wait(driver).until(ec.url_contains("/versions/1"))
    api, headers = api_session(live_server, email)
    version = httpx.get(f"{api}/models/scored-iris/versions/1", headers=headers).json()
    features = [f["name"] for f in version["input_schema"]["features"]]
    local = tmp_path / "train.csv"
    local.write_bytes(csv_bytes(iris_rows(60), features))

    # Files: upload from the disk, under a path of one's choosing.
    driver.find_element(By.LINK_TEXT, "Files").click()
    driver.find_element(By.ID, "file").send_keys(str(local))
    driver.find_element(By.ID, "path").send_keys("data/train.csv")
    submit(driver, "#file-upload button[type=submit]")
    row = "tr[data-path='data/train.csv']"
    assert text_of(driver, f"{row} td:first-child") == "data/train.csv"

    # Score it: the job form comes with the file chosen; the job runs to its end.
    driver.find_element(By.CSS_SELECTOR, f"{row} a.button").click()
    assert Select(driver.find_element(By.ID, "job-input")).first_selected_option.text == (
        "data/train.csv"
    )
    assert Select(driver.find_element(By.ID, "job-model")).first_selected_option.text == (
        "scored-iris"
    )
    submit(driver, "#new-job button[type=submit]")
    assert driver.current_url == f"{live_server.url}/jobs"
    status = "#jobs tbody tr [data-status]"
    wait(driver).until(lambda d: text_of(d, status) == "succeeded")
    assert "data/train-scored.csv" in text_of(driver, "#jobs tbody tr")

    # The same file as the version's drift reference, from the drift page; then removed.
    driver.get(f"{live_server.url}/models/scored-iris/drift?version=1")
    field = driver.find_element(By.ID, "reference-path")
    field.send_keys("data/train.csv")
    submit(driver, "#set-reference button[type=submit]")
    assert "data/train.csv (60 rows)" in text_of(driver, "#drift-summary")
    submit(driver, "#delete-reference button[type=submit]")
    # Batch jobs are not served traffic: without the file there is nothing to compare with.
    assert "has no drift reference" in text_of(driver, "#drift-error")
    assert not driver.find_elements(By.ID, "delete-reference")
    reference = httpx.get(f"{api}/models/scored-iris/versions/1/reference", headers=headers)
    assert reference.status_code == 404


def test_set_a_canary_and_a_webhook_and_find_both_in_the_audit_log(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    for _ in range(2):
        upload(driver, live_server, iris_skops, "canary-iris")
        wait(driver).until(ec.url_contains("/versions/"))

    # Traffic: from the model page, 20 % to v2; v1 the rest.
    driver.get(f"{live_server.url}/models/canary-iris")
    driver.find_element(By.LINK_TEXT, "Traffic").click()
    primary = driver.find_element(By.ID, "primary")
    primary.clear()
    primary.send_keys("v1")
    driver.find_element(By.ID, "canary").send_keys("v2")
    share = driver.find_element(By.ID, "canary_percent")
    share.clear()
    share.send_keys("20")
    submit(driver, "#set-traffic button[type=submit]")
    assert text_of(driver, "#traffic-policy") == "v1: weight 80 → v1\nv2: weight 20 → v2"

    # A refusal keeps what was typed.
    driver.find_element(By.ID, "canary").clear()
    driver.find_element(By.ID, "canary").send_keys("v7")
    submit(driver, "#set-traffic button[type=submit]")
    assert "does not resolve" in text_of(driver, "#traffic-error")
    assert driver.find_element(By.ID, "canary").get_attribute("value") == "v7"
    submit(driver, "#clear-traffic button[type=submit]")
    assert text_of(driver, "#traffic-policy").startswith("No traffic policy")

    # Webhooks: the secret once, then the list without it.
    driver.find_element(By.LINK_TEXT, "Webhooks").click()
    driver.find_element(By.ID, "webhook-url").send_keys("https://hooks.example.com/canary")
    Select(driver.find_element(By.ID, "webhook-model")).select_by_visible_text("canary-iris")
    submit(driver, "#new-webhook button[type=submit]")
    secret = text_of(driver, "#new-secret")
    assert secret.startswith("whsec_")
    assert "https://hooks.example.com/canary" in text_of(driver, "#webhooks")
    driver.find_element(By.LINK_TEXT, "Webhooks").click()
    assert secret not in driver.page_source

    # Audit: what this person did, newest first, narrowed to one kind.
    driver.find_element(By.LINK_TEXT, "Audit").click()
    actions = [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, "#audit tbody td:nth-child(3)")
    ]
    assert actions.index("webhook.created") < actions.index("traffic.changed")
    action = driver.find_element(By.ID, "action")
    action.send_keys("traffic.")
    submit(driver, "form[role=search] button[type=submit]")
    actions = [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, "#audit tbody td:nth-child(3)")
    ]
    assert actions == ["traffic.changed", "traffic.changed"]  # set, then cleared


def test_the_new_pages_fit_a_phone_screen(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser(width=375, height=812)
    sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "phone-pages")
    wait(driver).until(ec.url_contains("/versions/1"))
    for path in (
        "/files",
        "/jobs/new",
        "/webhooks",
        "/audit",
        "/models/phone-pages/traffic",
        "/models/phone-pages/drift",
    ):
        driver.get(f"{live_server.url}{path}")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        viewport = driver.execute_script("return window.innerWidth")
        assert width <= viewport, path
