"""The whole payment in a real browser: Debian's Chromium, headless, against `make run`.

Buy -> pay with the approving card -> credits shown; buy -> the declining card -> failure shown, no
credits; the return URL reloaded -> credits unchanged. Screenshots of each step go to
.local/e2e-screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.hypay_simulator import APPROVING_CARD, DECLINING_CARD
from tests.support.make_run import MakeRun
from tests.support.payments import STARTER
from tests.support.pg import with_database

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".local" / "e2e-screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# Selenium logs every command at DEBUG, typed card numbers included: keep it quiet.
for _name in ("selenium", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _install_chromium() -> str | None:
    """Debian's chromium and chromium-driver, installed where missing; the reason when impossible."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Debian's chromium and chromium-driver are missing, and installing needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=900)
        if done.returncode != 0:
            return f"could not install chromium: {' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    return None if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists() else "chromium did not install"


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - selenium's WebDriver
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = Path(ROOT / ".local" / "e2e-profile")
    shutil.rmtree(profile, ignore_errors=True)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def running(pg_server) -> Iterator[MakeRun]:  # noqa: ANN001 - the session's Postgres server
    """`make run`'s program on free ports, with a database of its own."""
    name = pg_server.create()
    run = MakeRun({"DATABASE_URL": with_database(pg_server.url, name)}).start()
    assert "Ctrl-C stops everything." in run.output, run.output
    yield run
    run.stop()
    pg_server.drop(name)


def shot(driver, name: str) -> None:  # noqa: ANN001
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text_of(driver, element_id: str) -> str:  # noqa: ANN001
    return driver.find_element("id", element_id).text


def wait_for(driver, condition, timeout: float = 20):  # noqa: ANN001, ANN201
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def buy_starter(driver, base: str) -> None:  # noqa: ANN001
    driver.get(f"{base}/demo/")
    button = wait_for(driver, lambda d: d.find_element("css selector", f'li[data-pack-id="{STARTER}"] button.buy'))
    shot(driver, f"shop-{text_of(driver, 'credits')}-credits")
    button.click()
    wait_for(driver, lambda d: d.find_elements("id", "card-number"))


def pay(driver, card: str, cvv: str) -> None:  # noqa: ANN001
    driver.find_element("id", "card-number").send_keys(card)
    driver.find_element("id", "cvv").send_keys(cvv)
    driver.find_element("id", "id-number").clear()
    driver.find_element("id", "id-number").send_keys("890108566")
    driver.find_element("id", "pay").click()
    wait_for(driver, lambda d: "/demo/result" in d.current_url)
    wait_for(driver, lambda d: text_of(d, "result-status") not in ("...", "pending"))
    wait_for(driver, lambda d: text_of(d, "credits") != "...")


def return_urls(driver) -> list[str]:  # noqa: ANN001
    """The /hypay/return URLs the browser was redirected through (Chrome's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if "/hypay/return?" in url:
                urls.append(url)
    return urls


def test_buy_pay_decline_and_reload_in_a_real_browser(browser, running: MakeRun) -> None:  # noqa: ANN001
    base = running.base
    # Buy -> pay with the approving card -> the result page shows it completed and the credits
    buy_starter(browser, base)
    shot(browser, "payment-page")
    pay(browser, APPROVING_CARD, "125")
    assert text_of(browser, "result-status") == "completed"
    assert text_of(browser, "credits") == "100"
    shot(browser, "paid-credits-shown")
    [paid_return] = return_urls(browser)
    assert "payment_id" in browser.current_url and "Sign=" not in browser.current_url  # only our id

    # Buy -> the declining card -> failure shown, no credits
    buy_starter(browser, base)
    pay(browser, DECLINING_CARD, "123")
    assert text_of(browser, "result-status") == "failed"
    assert text_of(browser, "credits") == "100"
    shot(browser, "declined-no-credits")

    # The return URL reloaded -> the same result, credits unchanged
    browser.get(paid_return)
    wait_for(browser, lambda d: "/demo/result" in d.current_url)
    wait_for(browser, lambda d: text_of(d, "result-status") == "completed")
    wait_for(browser, lambda d: text_of(d, "credits") != "...")
    assert text_of(browser, "credits") == "100"
    shot(browser, "return-reloaded-unchanged")
