"""The dashboard in a real Chromium against a live server: the flows a person goes through.

Each test writes a screenshot of the page it ends on to docs/screenshots/ (docs/guides/dashboard.md shows them).
"""

from __future__ import annotations

import http.server
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from modelyard.db.tables import BatchJob
from tests.jobs.helpers import csv_bytes, iris_rows, running_job
from tests.support.browser import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.support.servers import ServerProcess, free_port

PASSWORD = "browser test password"
WAIT_SECONDS = 20  # a bound on each wait, not a timing assertion
XSS = "<img src=x onerror=alert(1)>"

NewBrowser = Callable[..., Any]


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_SECONDS)


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def gone(element: WebElement) -> Callable[[WebDriver], bool]:
    """Wait condition: the element's page has been replaced."""

    def check(_: WebDriver) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:  # stale, or "node does not belong to the document"
            return True
        return False

    return check


def submit(driver: WebDriver, css: str) -> None:
    """Click a submit button and wait for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, css).click()
    wait(driver).until(gone(old))


def shoot(driver: WebDriver, path: Path) -> None:
    """Screenshot the whole page (the window grown to the page's height, up to a bound)."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], min(int(height) + 140, 2400))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])


def sign_up(driver: WebDriver, server: ServerProcess) -> str:
    email = f"person-{uuid.uuid4().hex[:8]}@example.com"
    driver.get(f"{server.url}/sign-up")
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "full_name").send_keys("Ada " + XSS)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "password_again").send_keys(PASSWORD)
    submit(driver, "form.stack button[type=submit]")
    assert driver.current_url == f"{server.url}/"
    return email


def sign_in_with_keyboard(
    driver: WebDriver, server: ServerProcess, email: str, password: str
) -> None:
    """Sign in from the keyboard alone: type, Tab to the next field, Enter to send."""
    driver.get(f"{server.url}/sign-in")
    field = driver.find_element(By.ID, "email")
    field.send_keys(email)
    field.send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "password"
    old = driver.find_element(By.TAG_NAME, "html")
    focused.send_keys(password + Keys.ENTER)
    wait(driver).until(gone(old))


def upload(driver: WebDriver, server: ServerProcess, path: Path, name: str, **fields: str) -> None:
    """Upload through the form (the JavaScript path, with its progress bar)."""
    driver.get(f"{server.url}/models/new")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "file").send_keys(str(path))
    for field, value in fields.items():
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()


def no_dialog(driver: WebDriver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - raises when no dialog is open
    except NoAlertPresentException:
        return True
    return False


def total_after_reload(driver: WebDriver, analytics: str) -> int:
    driver.get(analytics)
    return int(text_of(driver, "#total-requests"))


def chart_values(driver: WebDriver, chart: str) -> dict[str, float]:
    """Return today's value of each series of a bar chart, read from the bars' titles."""
    values: dict[str, float] = {}
    for title in driver.find_elements(By.CSS_SELECTOR, f"{chart} rect.bar title"):
        _, series_value = str(title.get_attribute("textContent")).split(" · ")
        series, value = series_value.split(": ")
        values[series] = float(value)
    return values


def predict(driver: WebDriver, values: list[str]) -> str:
    for i, value in enumerate(values):
        field = driver.find_element(By.ID, f"f{i}")
        field.clear()
        field.send_keys(value)
    submit(driver, "#try-form button[type=submit]")
    return text_of(driver, "#prediction-value")


def test_sign_up_upload_promote_predict_and_see_usage(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path, screenshots: Path
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "iris", description="Iris classifier")
    wait(driver).until(ec.url_contains("/versions/1"))
    assert "development" in text_of(driver, "h1")

    driver.find_element(By.LINK_TEXT, "Promote to production").click()
    assert "Promote to production?" in text_of(driver, "h1")
    submit(driver, "#confirm")
    assert "production" in text_of(driver, "#version-1")
    shoot(driver, screenshots / "model.png")

    driver.find_element(By.LINK_TEXT, "v1").click()
    version_url = driver.current_url
    assert predict(driver, ["5.1", "3.5", "1.4", "0.2"]) == "0"
    assert driver.find_element(By.ID, "probabilities").is_displayed()
    shoot(driver, screenshots / "version.png")

    analytics = version_url.split("/versions")[0] + "/analytics?days=1"
    # The prediction log writes in the background, within its flush interval.
    wait(driver).until(lambda d: total_after_reload(d, analytics) >= 1)
    before = int(text_of(driver, "#total-requests"))
    bars_before = chart_values(driver, "#requests-chart")
    driver.get(version_url)
    for _ in range(3):
        predict(driver, ["6.7", "3.0", "5.2", "2.3"])
    wait(driver).until(lambda d: total_after_reload(d, analytics) >= before + 3)
    bars_after = chart_values(driver, "#requests-chart")
    assert bars_after["succeeded"] == bars_before["succeeded"] + 3
    shoot(driver, screenshots / "analytics.png")

    driver.get(f"{live_server.url}/")
    assert "iris" in text_of(driver, "#models")
    shoot(driver, screenshots / "models.png")
    driver.get(f"{live_server.url}/predictions")
    shoot(driver, screenshots / "predictions.png")


def test_refused_upload_shows_the_reason(
    live_server: ServerProcess, new_browser: NewBrowser, tmp_path: Path
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a model at all\n" * 100)
    upload(driver, live_server, junk, "notes")
    error = wait(driver).until(ec.visibility_of_element_located((By.ID, "upload-error")))
    assert "unrecognised model file" in error.text
    assert driver.current_url.endswith("/models/new")


def test_create_and_revoke_an_api_key(
    live_server: ServerProcess, new_browser: NewBrowser, screenshots: Path
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    driver.get(f"{live_server.url}/api-keys")
    driver.find_element(By.ID, "key-name").send_keys("laptop")
    submit(driver, "form.filters button[type=submit]")
    key = text_of(driver, "#new-key")
    assert driver.find_element(By.CSS_SELECTOR, "button.copy").is_displayed()
    me = f"{live_server.url}/api/v1/auth/me"
    assert httpx.get(me, headers={"X-API-Key": key}).status_code == 200
    shoot(driver, screenshots / "api-keys.png")

    driver.get(f"{live_server.url}/api-keys")
    assert key not in driver.page_source  # shown once only
    submit(driver, "#api-keys button.danger")
    assert "revoked" in text_of(driver, "#api-keys")
    assert httpx.get(me, headers={"X-API-Key": key}).status_code == 401


def test_admin_deactivation_ends_an_open_dashboard_session(
    live_server: ServerProcess, new_browser: NewBrowser, screenshots: Path
) -> None:
    person = new_browser()
    email = sign_up(person, live_server)
    person.get(f"{live_server.url}/account")
    assert email in text_of(person, "dl.facts")

    admin = new_browser()
    sign_in_with_keyboard(admin, live_server, ADMIN_EMAIL, ADMIN_PASSWORD)
    admin.get(f"{live_server.url}/admin/users")
    shoot(admin, screenshots / "admin-users.png")
    submit(admin, f"button[aria-label='Deactivate {email}']")
    assert "deactivated" in admin.page_source

    person.get(f"{live_server.url}/account")
    assert "/sign-in" in person.current_url
    assert person.find_element(By.ID, "password").is_displayed()
    shoot(person, screenshots / "sign-in.png")


def test_xss_texts_render_inert(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    upload(
        driver,
        live_server,
        iris_skops,
        "xss-model",
        description="<script>alert('description')</script>" + XSS,
    )
    wait(driver).until(ec.url_contains("/versions/1"))
    # A model named like markup is refused; the reason is shown as text.
    upload(driver, live_server, iris_skops, XSS)
    error = wait(driver).until(ec.visibility_of_element_located((By.ID, "upload-error")))
    assert "model name" in error.text
    driver.get(f"{live_server.url}/api-keys")
    driver.find_element(By.ID, "key-name").send_keys(XSS)
    submit(driver, "form.filters button[type=submit]")
    for path in ("/", "/api-keys", "/account"):
        driver.get(f"{live_server.url}{path}")
        assert no_dialog(driver), path
    driver.find_element(By.LINK_TEXT, "Models").click()
    driver.find_element(By.LINK_TEXT, "xss-model").click()
    assert no_dialog(driver)
    assert "<script>alert('description')</script>" in text_of(driver, "#model-description")
    assert not driver.find_elements(By.CSS_SELECTOR, "main img")


@pytest.fixture
def other_origin(live_server: ServerProcess) -> Iterator[str]:
    """Serve a page on another origin (another port) whose form posts to the dashboard."""
    attack = (
        "<!doctype html><title>cheap prizes</title>"
        f'<form method="post" action="{live_server.url}/api-keys">'
        '<input type="hidden" name="name" value="planted">'
        '<input type="hidden" name="csrf_token" value="guessed">'
        '<button id="go" type="submit">Win</button></form>'
    ).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(attack)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/"
    httpd.shutdown()
    httpd.server_close()


def test_cross_site_form_post_is_refused(
    live_server: ServerProcess, new_browser: NewBrowser, other_origin: str
) -> None:
    driver = new_browser()
    sign_up(driver, live_server)
    # Same site (127.0.0.1), another origin: the browser sends the session cookie along.
    driver.get(other_origin)
    submit(driver, "#go")
    assert "another site" in driver.page_source
    driver.get(f"{live_server.url}/api-keys")
    assert "planted" not in driver.page_source


def test_pages_fit_a_phone_screen(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path, screenshots: Path
) -> None:
    driver = new_browser(width=375, height=812)
    sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "phone")
    wait(driver).until(ec.url_contains("/versions/1"))
    version = driver.current_url
    for url in (f"{live_server.url}/", version.split("/versions")[0], version):
        driver.get(url)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        viewport = driver.execute_script("return window.innerWidth")
        assert width <= viewport, url
    driver.get(version.split("/versions")[0])
    shoot(driver, screenshots / "model-phone.png")


def test_a_model_page_tells_when_the_model_changes_elsewhere(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser()
    email = sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "live-iris")
    wait(driver).until(ec.url_contains("/versions/1"))
    driver.find_element(By.CSS_SELECTOR, ".crumbs a[href^='/models/']").click()
    notice = driver.find_element(By.ID, "live-notice")
    assert not notice.is_displayed()

    # Elsewhere (a script with the same account) the version is promoted.
    api, headers = api_session(live_server, email)
    promoted = httpx.patch(
        f"{api}/models/live-iris/versions/1/lifecycle",
        json={"stage": "production"},
        headers=headers,
    )
    assert promoted.status_code == 200, promoted.text
    wait(driver).until(ec.visibility_of(notice))
    assert notice.text == "live-iris v1 → production: stage changed elsewhere — reload"
    notice.find_element(By.LINK_TEXT, "reload").click()
    wait(driver).until(lambda d: "production" in text_of(d, "#version-1"))


def api_session(server: ServerProcess, email: str) -> tuple[str, dict[str, str]]:
    """The API's base URL and the headers of a fresh sign-in of `email` (a script's view)."""
    api = f"{server.url}/api/v1"
    token = httpx.post(f"{api}/auth/login", json={"email": email, "password": PASSWORD}).json()
    return api, {"Authorization": f"Bearer {token['access_token']}"}


def start_running_job(server: ServerProcess, version: dict[str, Any], owner_id: str) -> str:
    """Write a running job into the server's database (see `running_job`)."""
    job = running_job(owner_id, version, rows_total=1_000)
    job_id = str(job.id)
    with server_database(server) as db:
        db.add(job)
        db.commit()
    return job_id


@contextmanager
def server_database(server: ServerProcess) -> Iterator[Session]:
    engine = create_engine(
        f"sqlite:///{server.folder / 'data' / 'modelyard.db'}", connect_args={"timeout": 30}
    )
    try:
        with Session(engine) as db:
            yield db
    finally:
        engine.dispose()


def test_the_jobs_page_moves_a_running_jobs_progress_live(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser()
    email = sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "job-iris")
    wait(driver).until(ec.url_contains("/versions/1"))
    api, headers = api_session(live_server, email)
    version = httpx.get(f"{api}/models/job-iris/versions/1", headers=headers).json()
    me = httpx.get(f"{api}/auth/me", headers=headers).json()
    job_id = start_running_job(live_server, version, me["id"])

    driver.find_element(By.LINK_TEXT, "Jobs").click()
    row = f"tr[data-job-id='{job_id}']"
    wait(driver).until(lambda d: text_of(d, f"{row} [data-rows]") == "0 / 1,000 rows")
    notice = driver.find_element(By.ID, "live-notice")
    assert not notice.is_displayed()

    # The worker (here: the test) counts a chunk: the page moves without a reload.
    with server_database(live_server) as db:
        db.execute(update(BatchJob).where(BatchJob.id == uuid.UUID(job_id)).values(rows_done=400))
        db.commit()
    wait(driver).until(lambda d: text_of(d, f"{row} [data-rows]") == "400 / 1,000 rows")
    bar = driver.find_element(By.CSS_SELECTOR, f"{row} [data-progress]")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("400", "1000")

    # Cancelled elsewhere: the page says so and offers a reload.
    cancelled = httpx.post(f"{api}/batch-jobs/{job_id}/cancel", headers=headers)
    assert cancelled.status_code == 202, cancelled.text
    wait(driver).until(ec.visibility_of(notice))
    assert notice.text == f"Batch job {job_id[:8]}… cancelled — reload"
    notice.find_element(By.LINK_TEXT, "reload").click()
    wait(driver).until(lambda d: "(stopping)" in text_of(d, f"{row} [data-status]"))


def test_a_job_that_ends_while_its_page_is_open_shows_its_end_without_a_cancel_button(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = new_browser()
    email = sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "ending-iris")
    wait(driver).until(ec.url_contains("/versions/1"))
    api, headers = api_session(live_server, email)
    version = httpx.get(f"{api}/models/ending-iris/versions/1", headers=headers).json()
    me = httpx.get(f"{api}/auth/me", headers=headers).json()
    features = [f["name"] for f in version["input_schema"]["features"]]
    stored = httpx.post(
        f"{api}/files/upload",
        headers=headers,
        files={"file": ("in.csv", csv_bytes(iris_rows(3), features))},
        data={"path": "in.csv"},
    )
    assert stored.status_code == 201, stored.text
    job_id = start_running_job(live_server, version, me["id"])

    driver.find_element(By.LINK_TEXT, "Jobs").click()
    row = f"tr[data-job-id='{job_id}']"
    wait(driver).until(lambda d: text_of(d, f"{row} [data-rows]") == "0 / 1,000 rows")
    assert driver.find_elements(By.CSS_SELECTOR, f"{row} button.danger")  # Cancel
    driver.execute_script("window.sameDocument = true")

    # Its worker is gone: the server's own worker takes the job over and runs it to the end.
    with server_database(live_server) as db:
        db.execute(
            update(BatchJob)
            .where(BatchJob.id == uuid.UUID(job_id))
            .values(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
        )
        db.commit()

    wait(driver).until(lambda d: text_of(d, f"{row} [data-status]") == "succeeded")
    assert driver.execute_script("return window.sameDocument") is True  # no reload
    assert text_of(driver, f"{row} [data-rows]") == "3 / 3 rows"
    assert not driver.find_elements(By.CSS_SELECTOR, f"{row} button")
    output = driver.find_element(By.CSS_SELECTOR, f"{row} a[href='/jobs/{job_id}/output']")
    assert output.text == "Output"


def with_iris(live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path) -> WebDriver:
    """A browser signed in as a new person who has uploaded `iris` (on its version page)."""
    driver: WebDriver = new_browser()
    sign_up(driver, live_server)
    upload(driver, live_server, iris_skops, "iris")
    wait(driver).until(ec.url_contains("/versions/1"))
    return driver


def test_a_model_page_by_name(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)

    # As in the API, /models/iris: a name, not only a UUID.
    driver.get(f"{live_server.url}/models/iris")

    assert text_of(driver, "#model-name") == "iris"
    driver.get(f"{live_server.url}/models/nothing-of-that-name")
    assert "not found" in driver.page_source.lower()


def test_a_versions_action_buttons_stand_apart(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)
    driver.find_element(By.CSS_SELECTOR, ".crumbs a[href^='/models/']").click()

    buttons = driver.find_elements(By.CSS_SELECTOR, "#version-1 td.actions .button")

    assert [b.text for b in buttons] == ["Promote", "Staging", "Deprecate", "Archive"]
    boxes = [b.rect for b in buttons]
    for left, right in itertools.pairwise(boxes):
        if abs(left["y"] - right["y"]) < 1:  # side by side on one line
            assert right["x"] - (left["x"] + left["width"]) >= 4, boxes


def test_a_promotion_is_confirmed_on_the_model_page(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)
    driver.find_element(By.LINK_TEXT, "Promote to production").click()

    submit(driver, "#confirm")

    assert text_of(driver, "#stage-changed") == "Version 1 is now production."
    driver.get(f"{live_server.url}/models/iris")
    assert not driver.find_elements(By.ID, "stage-changed")  # said once, not on every visit


def test_try_it_keeps_every_typed_value_when_one_is_refused(
    live_server: ServerProcess, new_browser: NewBrowser, iris_skops: Path
) -> None:
    driver = with_iris(live_server, new_browser, iris_skops)
    typed = ["5.1", "abc", "1.4", "0.2"]
    for i, value in enumerate(typed):
        driver.find_element(By.ID, f"f{i}").send_keys(value)

    submit(driver, "#try-form button[type=submit]")

    assert "not a number" in text_of(driver, "#try-error")
    assert [driver.find_element(By.ID, f"f{i}").get_attribute("value") for i in range(4)] == typed
