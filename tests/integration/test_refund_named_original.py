"""The original amount an operator names for an unreadable-amount transaction (`original_amount`) is never taken for
Hyp's own: its refunds are zikoyAPI only, which Hyp caps (a same-day CancelTrans takes no amount: Hyp would cancel what
the transaction really paid while we recorded the named amount); a named amount may be corrected while no refund of it
moved money (one Hyp refused, say); credits are counted against the payment's price."""

from __future__ import annotations

import pytest

from tests.integration.test_admin_refund_http import refund
from tests.integration.test_refund_unreadable_amount import _charged_unreadably
from tests.integration.test_review import admin as admin  # noqa: F401 - the fixture
from tests.support.payments import Env


@pytest.fixture
def same_day(admin: Env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    """Whatever the hour of the run: a transaction made today is still cancellable (ours and the simulator's)."""
    from payments.services import refund as service

    chosen = service.choose_method
    monkeypatch.setattr(service, "choose_method", lambda **kw: chosen(**{**kw, "cancel_until_hour": 24}))
    admin.sim.cancel_until_hour = 24


@pytest.fixture
def charged(admin: Env, saved_card: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, str, str]:  # noqa: F811
    """(env, payment, Hyp Id): a saved-card charge of 199.00 whose answer gave the amount unreadably, completed by an
    operator (500 credits granted)."""
    return (admin, *_charged_unreadably(admin, monkeypatch, "complete"))


def _moved(env: Env, hypay_id: str) -> str:
    """What Hyp gave back of that transaction (refunds and cancellations), in the simulator's books."""
    return f"{env.sim.refunded.get(hypay_id, 0) / 100:.2f}"


@pytest.mark.usefixtures("same_day")
@pytest.mark.parametrize("named", ["1990.00", "1.00"])
def test_a_whole_refund_records_what_hyp_gave_back_not_the_named_original(
    charged: tuple[Env, str, str],
    named: str,
) -> None:
    env, payment, hypay_id = charged  # Hyp took 199.00
    # The operator mistypes what Hyp's transactions show, and asks for all of it
    answer = refund(payment, {"hypay_id": hypay_id, "original_amount": named, "reason": "customer asked"}, "r-1")
    # Whatever the answer, what we record as refunded is what Hyp moved
    recorded = env.rows("SELECT COALESCE(sum(amount), 0)::text FROM refunds WHERE status = 'succeeded'")[0][0]
    assert recorded in ("0", "0.00", _moved(env, hypay_id)), (recorded, _moved(env, hypay_id), answer.body)


def test_an_original_hyp_refused_is_not_kept_and_the_corrected_one_refunds(
    charged: tuple[Env, str, str],
) -> None:
    env, payment, hypay_id = charged
    env.sim.transmit(hypay_id)  # no longer cancellable: a zikoyAPI refund, which Hyp caps
    credits = env.credits()
    # A typo: 1990.00 for 199.00. Hyp refuses the refund of "all that remains" (CCode 33): nothing moved
    typo = refund(payment, {"hypay_id": hypay_id, "original_amount": "1990.00", "reason": "customer asked"}, "r-typo")
    assert typo.status == 502 and typo.json["ccode"] == 33, typo.body
    # The operator corrects it: what Hyp's transactions show
    fixed = refund(payment, {"hypay_id": hypay_id, "original_amount": "199.00", "reason": "customer asked"}, "r-fix")
    assert fixed.status == 201, fixed.body
    named = env.rows("SELECT amount::text, amount_named_by FROM hypay_transactions WHERE hypay_id = :h", h=hypay_id)
    assert named == [["199.00", "alice"]], named
    assert env.credits() == credits - 500


def test_the_credits_taken_back_do_not_hang_on_the_named_original(
    charged: tuple[Env, str, str],
) -> None:
    env, payment, hypay_id = charged  # 199.00 at Hyp, 500 credits granted
    env.sim.transmit(hypay_id)  # a zikoyAPI refund, which Hyp caps at what it took
    credits = env.credits()
    # The operator refunds all Hyp took (199.00) but mistypes the original as 1990.00: Hyp accepts (199 <= 199)
    answer = refund(
        payment,
        {"hypay_id": hypay_id, "original_amount": "1990.00", "amount": "199.00", "reason": "customer asked"},
        "r-1",
    )
    assert answer.status == 201 and _moved(env, hypay_id) == "199.00", answer.body
    # Everything the payment was bought for went back: so do its 500 credits (the price's share, 199.00 of 199.00)
    assert env.credits() == credits - 500, (env.credits() - credits, answer.body)


@pytest.mark.usefixtures("same_day")
def test_a_named_amount_is_never_cancelled_but_refunded(
    charged: tuple[Env, str, str],
) -> None:
    env, payment, hypay_id = charged
    answer = refund(payment, {"hypay_id": hypay_id, "original_amount": "199.00", "reason": "customer asked"}, "r-1")
    assert answer.status == 201 and answer.json["method"] == "refund", answer.body
    assert env.sim.calls.count("CancelTrans") == 0 and _moved(env, hypay_id) == "199.00"
