"""The whole payment in a real browser: Debian's Chromium, headless, against `make run`.

Buy -> pay with the approving card -> credits shown; buy -> the declining card -> failure shown, no
credits; the return URL reloaded -> credits unchanged. Paying one payment page twice -> the operator page
(behind the admin token) shows the second charge, its Refund button refunds it, and the journal shows the
first transaction granted, the second in review with its refund succeeded, the balance unchanged.
Screenshots of each step go to .local/e2e-screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ops.hypay_simulator import APPROVING_CARD, DECLINING_CARD
from ops.run import LOCAL_ADMIN_TOKEN
from tests.support.make_run import MakeRun
from tests.support.payments import STARTER
from tests.support.pg import with_database

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".local" / "e2e-screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
STARTER_CREDITS = 100

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


def shop_credits(driver, base: str) -> int:  # noqa: ANN001
    driver.get(f"{base}/demo/")
    wait_for(driver, lambda d: text_of(d, "credits") not in ("", "..."))
    return int(text_of(driver, "credits"))


def requests_sent(driver) -> list[dict]:  # noqa: ANN001
    """The requests the browser sent since the log was last read (Chrome's network log)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent


def journal_rows(driver, table: str) -> list:  # noqa: ANN001
    return driver.find_elements("css selector", f"#{table} tbody tr")


def test_second_charge_refunded_from_the_operator_page(browser, running: MakeRun) -> None:  # noqa: ANN001
    base = running.base
    start = shop_credits(browser, base)
    requests_sent(browser)  # what earlier tests left in the log

    # Buy -> pay with the approving card: completed, one pack's credits
    buy_starter(browser, base)
    payment_page = browser.current_url
    pay(browser, APPROVING_CARD, "125")
    assert text_of(browser, "result-status") == "completed"
    paid = start + STARTER_CREDITS
    assert text_of(browser, "credits") == str(paid)
    [payment_id] = parse_qs(urlsplit(browser.current_url).query)["payment_id"]

    # The same signed payment page paid again: a second charge; the payment stays completed, no more credits
    browser.get(payment_page)
    wait_for(browser, lambda d: d.find_elements("id", "card-number"))
    pay(browser, APPROVING_CARD, "125")
    assert parse_qs(urlsplit(browser.current_url).query)["payment_id"] == [payment_id]
    assert text_of(browser, "result-status") == "completed"
    assert text_of(browser, "credits") == str(paid)
    shot(browser, "operator-1-paid-twice")

    # The operator page asks for the admin token; the page never holds it
    browser.get(f"{base}/demo/operator")
    field = wait_for(browser, lambda d: d.find_element("id", "admin-token"))
    assert LOCAL_ADMIN_TOKEN not in browser.page_source
    shot(browser, "operator-2-asks-for-the-token")
    field.send_keys(LOCAL_ADMIN_TOKEN)
    browser.find_element("id", "sign-in").click()
    item_css = f'li.item[data-payment-id="{payment_id}"][data-reason="second_charge"]'
    item = wait_for(browser, lambda d: d.find_element("css selector", item_css))
    assert item.get_attribute("data-kind") == "transaction"
    assert "refund this second transaction" in item.text
    assert browser.execute_script("return sessionStorage.getItem('payments-admin-token')") == LOCAL_ADMIN_TOKEN
    shot(browser, "operator-3-second-charge-in-the-queue")

    # Refund the second charge (reason filled): answered in words, the item leaves the queue
    item.find_element("css selector", "input.reason").send_keys("paid twice: refund the second charge")
    item.find_element("css selector", "button.refund").click()
    wait_for(browser, lambda d: text_of(d, "answer").startswith("Refunded"))
    answer = text_of(browser, "answer")
    assert "49.90 ILS" in answer and "0 credits taken back" in answer, answer
    wait_for(browser, lambda d: not d.find_elements("css selector", item_css))
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "operator-4-refunded")

    # The journal of the payment, on the page: balance unchanged, first granted, second in review and refunded
    wait_for(browser, lambda d: d.find_element("id", "journal").get_attribute("data-payment-id") == payment_id)
    wait_for(browser, lambda d: journal_rows(d, "journal-refunds"))
    assert text_of(browser, "journal-status") == "completed"
    assert text_of(browser, "journal-balance") == str(paid)
    first = text_of(browser, "journal-paid-by")
    charges = {
        row.get_attribute("data-hypay-id"): row.get_attribute("data-decision")
        for row in journal_rows(browser, "journal-transactions")
        if row.get_attribute("data-source") in ("redirect", "notify")
    }
    assert charges.pop(first) == "granted", charges
    [(second, decision)] = charges.items()
    assert decision == "review"
    [refund] = journal_rows(browser, "journal-refunds")
    assert refund.get_attribute("data-original-hypay-id") == second
    assert refund.get_attribute("data-status") == "succeeded"
    assert [row.get_attribute("data-type") for row in journal_rows(browser, "journal-ledger")] == ["purchase"]
    browser.execute_script("document.getElementById('journal').scrollIntoView()")
    shot(browser, "operator-5-journal")

    # Every admin call carried the token as a bearer header, never in a URL; the refund had an Idempotency-Key
    sent = requests_sent(browser)
    assert not [r["url"] for r in sent if LOCAL_ADMIN_TOKEN in r["url"]]
    [refund_call] = [
        r for r in sent if r["method"] == "POST" and r["url"].endswith(f"/admin/payments/{payment_id}/refund")
    ]
    headers = {k.lower(): v for k, v in refund_call["headers"].items()}
    assert headers["authorization"] == f"Bearer {LOCAL_ADMIN_TOKEN}"
    assert len(headers["idempotency-key"]) == 36
    assert json.loads(refund_call["postData"])["hypay_id"] == second

    # The shop shows the same balance
    assert shop_credits(browser, base) == paid


def test_operator_page_holds_no_token_and_its_journal_needs_one(running: MakeRun) -> None:
    """No browser needed: the page and script are static, the journal answers only the admin token."""
    import urllib.error
    import urllib.request
    import uuid

    def get(path: str, token: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"{running.base}{path}", headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers.items()), answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read().decode()

    status, headers, page = get("/demo/operator")
    assert status == 200
    assert "default-src 'self'" in headers["content-security-policy"]
    assert LOCAL_ADMIN_TOKEN not in page
    assert page.count("<script") == 1 and '<script src="/demo/operator.js"></script>' in page
    status, _, script = get("/demo/operator.js")
    assert status == 200 and LOCAL_ADMIN_TOKEN not in script and "sessionStorage" in script
    assert get("/demo/operator", method="POST")[0] == 405

    journal = f"/demo/api/payments/{uuid.uuid4()}/journal"
    for token in (None, "wrong", f"{LOCAL_ADMIN_TOKEN}x"):
        status, headers, body = get(journal, token)
        assert status == 401 and json.loads(body)["detail"] == "a valid admin token is required", (token, body)
    assert get(journal, LOCAL_ADMIN_TOKEN)[0] == 404
    assert get("/demo/api/payments/not-a-uuid/journal", LOCAL_ADMIN_TOKEN)[0] == 404
