"""Secrets never reach logs, answers or stored records when something fails: a DATABASE_URL whose password holds a
raw `#`, Hyp answers that repeat our request (KEY, PassP, the CVV), a statement that keeps a card token failing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import db as db_module
from tests.support.api import invoke, reset_function_state
from tests.support.leaks import fail_on_leaks, find_leaks
from tests.support.payments import CALLBACK, CREATE, CVV, PRO, STARTER, Env, post


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as the suite's own leak check reads it (its message and every attribute)."""
    return "\n".join(r.getMessage() + " " + json.dumps(r.__dict__, default=str) for r in caplog.get_records("call"))


DB_PASSWORD_HEAD = "Zq8vRtPassHead"  # the part of the password before a raw '#', '/' or '?'


@pytest.fixture
def url_with_raw_password(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The functions' DATABASE_URL holds a password with a raw `#` (not percent-encoded), as people paste them."""
    from payments.settings import database_settings

    parts = urlsplit(env.url)
    user = parts.username or "postgres"
    url = f"postgresql://{user}:{DB_PASSWORD_HEAD}#rest@{parts.hostname}:{parts.port}{parts.path}"
    monkeypatch.setenv("DATABASE_URL", url)

    def reset() -> None:
        database_settings.cache_clear()
        db_module.reset_default_database()
        for name in (CREATE, CALLBACK):
            reset_function_state(name)

    reset()
    yield url
    reset()


def test_a_database_url_whose_password_holds_a_raw_hash_never_logs_the_password(
    url_with_raw_password: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # When a route that needs the database is called
    answer = invoke(CREATE, "GET", f"/payments/{uuid.uuid4()}", user=DEMO_USER_ID)
    out = capsys.readouterr()
    text = out.out + out.err + logged(caplog) + json.dumps(answer.body)
    # Then no part of the password is logged or answered, and the answer is ours: "not yet" (503), not a 500
    fail_on_leaks([DB_PASSWORD_HEAD] if DB_PASSWORD_HEAD in text else [], "a log line or the answer")
    assert answer.status == 503, answer.body


def _stored_everywhere(env: Env) -> str:
    """What the payment tables and the idempotency records hold, as text."""
    rows = env.rows("SELECT row_to_json(p)::text FROM payments p")
    rows += env.rows("SELECT row_to_json(k)::text FROM idempotency_keys k")
    return "\n".join(r[0] for r in rows)


def test_a_sign_answer_echoing_our_credentials_never_reaches_the_answer_or_the_tables(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_PASSP

    # Given Hyp's SIGN answer echoing the whole request it was sent, KEY and PassP included (a malformed answer)
    real = env.sim._sign

    def echoing(params: dict[str, str]) -> str:
        return f"{real(params)}&KEY={PUBLIC_TEST_TERMINAL_KEY}&PassP={PUBLIC_TEST_TERMINAL_PASSP}"

    monkeypatch.setattr(env.sim, "_sign", echoing)
    # When a payment page is asked for
    answer = post({"credit_pack_id": STARTER}, key="echo-sign")
    # Then neither the answer, nor the payment's row, nor the idempotency record carry the terminal's credentials
    where = {"the HTTP answer": answer.body, "the tables": _stored_everywhere(env), "the logs": logged(caplog)}
    for name, text in where.items():
        fail_on_leaks(find_leaks(text, PUBLIC_TEST_TERMINAL_KEY), name)


def test_a_decline_whose_message_echoes_our_request_never_reaches_the_answer_or_the_tables(
    env: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_PASSP

    # Given Hyp declining a saved-card charge with an errMsg that repeats the request it was sent (PassP, cvv)
    def declining(params: dict[str, str]) -> str:
        echo = f"bad request: PassP={params.get('PassP')} cvv={params.get('cvv')}"
        return "Id=&CCode=6&errMsg=" + echo.replace(" ", "%20").replace("=", "%3D")

    monkeypatch.setattr(env.sim, "_soft", declining)
    assert PUBLIC_TEST_TERMINAL_PASSP == "yaad"
    # When the saved card is charged
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="echo-decline")
    # Then the CVV and PassP are neither answered nor stored (payments.message, the idempotency record)
    where = {"the HTTP answer": answer.body, "the tables": _stored_everywhere(env), "the logs": logged(caplog)}
    for name, text in where.items():
        fail_on_leaks(find_leaks(text, CVV, "yaad"), name)


def test_a_failed_statement_that_saves_a_card_token_never_puts_the_token_in_the_database_log(env: Env) -> None:
    from tests.integration.test_hypay_callback import buy, notify, pay

    # Given the database refusing the statement that keeps a card token (a trigger, a constraint, a timeout: any
    # error; the server logs the failing statement's text, log_min_error_statement=error being its default)
    assert env.rows("SHOW log_min_error_statement") == [["error"]]
    env.rows(
        "CREATE FUNCTION refuse_card() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;"
        " CREATE TRIGGER refuse_card BEFORE INSERT ON public.saved_cards FOR EACH ROW EXECUTE FUNCTION refuse_card()"
    )
    [[size]] = env.rows("SELECT (pg_stat_file(current_setting('data_directory') || '/log')).size")
    # When a payment whose buyer asked to keep the card is notified (the token is fetched and the INSERT fails)
    paid = pay(env, buy(env, key="keep-card", save_card=True))
    notify(paid.redirect_query)
    # Then the server's log (what RDS exports to CloudWatch Logs) does not hold the token
    [[log]] = env.rows("SELECT pg_read_file(current_setting('data_directory') || '/log', :s, 1000000)", s=size)
    assert "saved_cards" in log  # the failing statement was logged
    fail_on_leaks(find_leaks(log), "the database server's log")
