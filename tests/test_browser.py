"""A real browser (headless Chromium) runs "Backfill this character" in the admin, and a query
in GraphiQL with every host but this machine unreachable (its assets are the project's own).

Needs the Debian packages `chromium` and `chromium-driver` (`.ci/install-browser`). Without
them the test skips, except in CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import lifecycle
from backfill.models import BackfillJob
from killboard.models import Character

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path("/tmp/killboard-backfill-admin.png")
GRAPHIQL_SCREENSHOT = Path("/tmp/killboard-graphiql.png")
CHARACTER = 2117325769
WAIT_SECONDS = 60

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a fresh profile and no outside traffic."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = f"needs {CHROMIUM} and {CHROMEDRIVER} (run .ci/install-browser)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
        # Offline: any name but this machine's resolves to nothing (a CDN would never load).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(browser: Any, live_server: Any, django_user_model: Any) -> None:
    """Log in to the admin as a superuser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser("root", "root@example.com", "secret-pw")
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys("secret-pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # Leaving the page before the login's answer arrives would cancel it.
    WebDriverWait(browser, WAIT_SECONDS).until(lambda driver: "/login/" not in driver.current_url)


def test_admin_backfills_a_character_and_shows_it_succeeded(
    browser: Any, live_server: Any, django_user_model: Any, fake: Any, world: Any
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import url_contains
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    world.add_character(CHARACTER, 60)
    # The name ESI gives: the backfill fetches its target's details (birthday) first.
    name = world.name(CHARACTER)
    Character.objects.create(id=CHARACTER, name=name)
    log_in(browser, live_server, django_user_model)
    browser.get(f"{live_server.url}/admin/killboard/character/")
    browser.find_element(
        By.CSS_SELECTOR, f"input[name=_selected_action][value='{CHARACTER}']"
    ).click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("backfill_this_character")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()

    form = browser.find_element(By.ID, "backfill-character-form")
    assert name in browser.page_source
    form.find_element(By.NAME, "max_pages").send_keys("4")
    form.find_element(By.NAME, "limit").clear()
    form.find_element(By.NAME, "limit").send_keys("10")
    form.find_element(By.NAME, "apply").click()

    # The job list (in-process the request itself runs the backfill: give it time to answer),
    # then watch the job until it reports success with a full progress bar.
    WebDriverWait(browser, WAIT_SECONDS).until(url_contains("/admin/backfill/backfilljob/"))
    # The message shows once: on the first load of the list, before any refresh.
    assert "Started 1 backfill jobs." in browser.page_source
    deadline = time.monotonic() + WAIT_SECONDS
    row = None
    while time.monotonic() < deadline:
        assert browser.current_url.endswith("/admin/backfill/backfilljob/")
        row = browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr")
        if "Succeeded" in row.text:
            break
        time.sleep(0.5)
        browser.refresh()
    browser.save_screenshot(str(SCREENSHOT))
    assert row is not None
    assert "Succeeded" in row.text
    assert f"character {CHARACTER} ({name})" in row.text
    assert "100%" in row.text
    assert "40 stored" in row.text
    bar = row.find_element(By.CSS_SELECTOR, "progress.backfill-progress")
    assert bar.get_attribute("value") == "100"
    job = BackfillJob.objects.get()
    assert (job.status, job.stored, job.max_pages, job.limit) == ("succeeded", 40, 4, 10)
    assert fake.stats()["violation_count"] == 0


def test_graphiql_runs_a_query_offline(browser: Any, live_server: Any, django_user_model: Any):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    lifecycle.create_job(CHARACTER, max_pages=1)
    log_in(browser, live_server, django_user_model)

    browser.get(f"{live_server.url}/graphql/")
    # The editor rendered: React and GraphiQL loaded from /static/, not from a CDN.
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".graphiql-query-editor .CodeMirror")
    )
    browser.find_element(By.CSS_SELECTOR, ".graphiql-execute-button").click()
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda driver: "totalCount" in driver.find_element(By.CSS_SELECTOR, ".result-window").text
    )
    browser.save_screenshot(str(GRAPHIQL_SCREENSHOT))
    result = browser.find_element(By.CSS_SELECTOR, ".result-window").text
    assert '"totalCount": 1' in result
    assert f'"targetId": {CHARACTER}' in result
    assert "errors" not in result
