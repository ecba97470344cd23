"""Hyp's KEY rotated (in Hyp's portal, then in the secret) while a paid transaction's callback signed with the old KEY
is still to come: Hyp's notify sent again after an earlier 503, a browser arriving or reloading after the rotation. Its
Sign fails against the new KEY and Hyp accepts our new credentials, so it was called forged: 403, nothing written, the
payment left pending for the cleanup to expire (an outside review). The secret's PreviousKEY (HYPAY_PREVIOUS_KEY
locally), kept for a grace period after a rotation (docs/operations.md), makes such a Sign genuine: settled on what it
covers, as in `hmac` mode, and counted (SignedWithPreviousKey)."""

from __future__ import annotations

import pytest

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_MASOF
from payments.adapters.hypay import HypayCredentials
from tests.integration.test_hypay_callback import browser, buy, notify, pay
from tests.support.api import reset_function_state
from tests.support.payments import CALLBACK, CREATE, SUCCESS_PAGE, Env

NEW_KEY = "rotated-key-0123456789"


def _rotate(env: Env, monkeypatch: pytest.MonkeyPatch, *, previous: str | None) -> None:
    """The KEY rotated at Hyp, then in what the functions read (their cached credentials dropped)."""
    env.sim.terminals[PUBLIC_TEST_TERMINAL_MASOF].key = NEW_KEY
    monkeypatch.setenv("HYPAY_KEY", NEW_KEY)
    if previous is None:
        monkeypatch.delenv("HYPAY_PREVIOUS_KEY", raising=False)
    else:
        monkeypatch.setenv("HYPAY_PREVIOUS_KEY", previous)
    from payments.settings import hypay_settings

    hypay_settings.cache_clear()
    for function in (CREATE, CALLBACK):
        reset_function_state(function)


def test_a_paid_callback_signed_before_the_rotation_completes_its_payment_in_the_grace_period(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two payments Hyp charged before the KEY was rotated (their callbacks signed with the old KEY)
    first, second = buy(env, key="before-1"), buy(env, key="before-2")
    paid_first, paid_second = pay(env, first), pay(env, second)
    before = env.credits()
    # When the KEY is rotated, the old one kept as the previous KEY
    _rotate(env, monkeypatch, previous=PUBLIC_TEST_TERMINAL_KEY)
    capsys.readouterr()
    # Then Hyp's notify of the first and the browser's return of the second, each signed with the old KEY, complete them
    assert notify(paid_first.redirect_query).status == 200
    back = browser(paid_second.redirect_query)
    assert back.status == 302 and back.headers["location"].startswith(SUCCESS_PAGE), back.headers
    assert env.status(first["payment_id"]) == env.status(second["payment_id"]) == "completed"
    assert env.credits() == before + 200
    decided = env.rows("SELECT decision, verified FROM hypay_transactions ORDER BY first_seen")
    assert decided == [["granted", True], ["granted", True]], decided
    # And the grace period shows in the metrics (PreviousKEY comes out of the secret once these stop)
    assert capsys.readouterr().out.count('"SignedWithPreviousKey"') >= 2
    # And a callback signed with neither KEY is still refused as forged
    forged = paid_first.redirect_query.replace("Sign=", "Sign=0", 1)
    assert notify(forged).status in (400, 403)


def test_without_the_previous_key_a_callback_signed_before_the_rotation_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment charged before the rotation, and a rotation that did not keep the old KEY
    payment = buy(env)
    paid = pay(env, payment)
    _rotate(env, monkeypatch, previous=None)
    # When its callback comes: Then it is refused, as a Sign no KEY of ours made (the runbook says to keep the old one)
    assert notify(paid.redirect_query).status == 403
    assert env.status(payment["payment_id"]) == "pending"


def test_the_previous_key_is_read_from_the_secret_and_never_shown() -> None:
    creds = HypayCredentials.from_mapping(
        {"Masof": PUBLIC_TEST_TERMINAL_MASOF, "KEY": NEW_KEY, "PassP": "pass", "PreviousKEY": PUBLIC_TEST_TERMINAL_KEY}
    )
    assert creds.previous_key == PUBLIC_TEST_TERMINAL_KEY and PUBLIC_TEST_TERMINAL_KEY not in repr(creds)
    same = HypayCredentials.from_mapping(
        {"Masof": PUBLIC_TEST_TERMINAL_MASOF, "KEY": NEW_KEY, "PassP": "pass", "PreviousKEY": NEW_KEY}
    )
    assert same.previous_key is None  # the current KEY again is no previous one
