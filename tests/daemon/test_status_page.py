"""The status page in a real headless browser: Debian's chromium driven by its chromedriver
(selenium; no browser download). Sign in, load a policy, start, see telemetry move, e-stop, see
the hold. Skipped where chromium is not installed, except in CI (CI=true), where it must run."""

from __future__ import annotations

import os
import shutil

import pytest

from robopolicy.data.store import EpisodeStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.browser
if not (CHROMIUM and CHROMEDRIVER) and os.environ.get("CI") != "true":
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason="needs Debian's chromium and chromium-driver")]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "apt-get install chromium chromium-driver (make browser-deps)"
    os.environ["SE_OFFLINE"] = "true"  # never let selenium's manager look for a browser download
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_start_telemetry_estop_and_hold_from_the_status_page(daemon, checkpoint, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    text = lambda el_id: browser.find_element(By.ID, el_id).text  # noqa: E731
    browser.get(daemon.url + "/")
    wait.until(lambda b: b.find_element(By.ID, "login-view").is_displayed())
    assert "robopolicy" in browser.title
    # a wrong token is refused on the page
    browser.find_element(By.ID, "token").send_keys("not-the-token-at-all")
    browser.find_element(By.ID, "login").click()
    wait.until(lambda b: "wrong token" in text("login-message"))
    # the right one opens the page
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(daemon.token)
    browser.find_element(By.ID, "login").click()
    wait.until(lambda b: b.find_element(By.ID, "app").is_displayed() and text("state") == "idle")
    assert daemon.token not in browser.current_url
    # load the policy and start
    browser.find_element(By.ID, "checkpoint").send_keys(str(checkpoint))
    browser.find_element(By.ID, "load").click()
    wait.until(lambda b: str(checkpoint) in text("policy"))
    browser.find_element(By.ID, "max-ticks").send_keys("100000")
    wait.until(lambda b: b.find_element(By.ID, "start").is_enabled())
    browser.find_element(By.ID, "start").click()
    wait.until(lambda b: text("state") == "running")
    wait.until(lambda b: int(text("ticks")) > 20)  # telemetry moves over the WebSocket
    first = int(text("ticks"))
    wait.until(lambda b: int(text("ticks")) > first + 10)
    browser.save_screenshot(str(daemon.root / "status_page_running.png"))
    # e-stop: the page shows the hold
    browser.find_element(By.ID, "estop").click()
    wait.until(lambda b: text("state") == "estopped")
    wait.until(lambda b: "estop" in text("faults"))
    wait.until(lambda b: "fault" in text("last"))
    s = daemon.client().status()
    assert s["state"] == "estopped" and s["last_episode"]["faults"][0]["kind"] == "estop"
    held = int(text("ticks"))
    browser.implicitly_wait(0)
    import time

    time.sleep(0.5)
    assert int(text("ticks")) == held, "the arm must not tick after the e-stop"
    assert browser.find_element(By.ID, "reset").is_enabled() and not browser.find_element(By.ID, "start").is_enabled()
    browser.find_element(By.ID, "reset").click()
    wait.until(lambda b: text("state") == "idle")
    store = EpisodeStore.open(daemon.root / "rec.zarr")
    assert store.episode_metadata(store.n_episodes - 1)["faults"][0]["kind"] == "estop"
