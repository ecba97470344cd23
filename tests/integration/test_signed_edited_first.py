"""A signed link with an unsigned field edited, delivered before (or while) Hyp's own verified delivery of the same
transaction: the edited copy is settled on its Sign alone (Hesh and L4digit not read), and what Hyp's verified
delivery carries beyond the Sign (the invoice number, the card's last four digits) is still recorded, never taken
back by the edited copy."""

from __future__ import annotations

import threading

import pytest

from ops.hypay_simulator import APPROVING_CARD
from payments.domain import hypay as protocol
from payments.settings import api_settings
from tests.integration.test_hypay_callback import browser, buy, location, notify, pay
from tests.support.api import reset_function_state
from tests.support.payments import SUCCESS_PAGE, Env


def _invoices_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPAY_SEND_INVOICE", "true")
    api_settings.cache_clear()
    reset_function_state("CreatePaymentFunction")


def _edited(raw: str) -> str:
    """The genuine link with one unsigned field nothing reads edited (UID): its Sign still right, VERIFY says no."""
    return "&".join("UID=0000000000000000" if p.startswith("UID=") else p for p in raw.split("&"))


def _recorded(env: Env, payment_id: str) -> tuple[list[list], list[list]]:
    return (
        env.rows("SELECT invoice_number FROM invoices WHERE payment_id = :p::uuid", p=payment_id),
        env.rows("SELECT last4 FROM saved_cards WHERE payment_id = :p::uuid", p=payment_id),
    )


@pytest.mark.parametrize("edited_first", [False, True], ids=["genuine-only", "edited-link-first"])
def test_an_edited_link_delivered_first_does_not_lose_what_hyps_verified_delivery_records(
    env: Env, monkeypatch: pytest.MonkeyPatch, edited_first: bool
) -> None:
    # Given a payment with "keep my card", Hyp issuing the invoice, paid on Hyp's page
    _invoices_on(monkeypatch)
    payment = buy(env, save_card=True)
    paid = pay(env, payment)
    hesh = protocol.decode_query(paid.redirect_query)["Hesh"]
    assert hesh != "0"
    if edited_first:
        # When the link's holder sends the signed link with an unsigned field edited, first: settled on its Sign
        assert location(browser(_edited(paid.redirect_query)))[0] == SUCCESS_PAGE
    # And Hyp's own notify (genuine, VERIFIED) arrives
    assert notify(paid.redirect_query).status == 200
    assert env.status(payment["payment_id"]) == "completed"
    # Then what Hyp's verified delivery says is recorded, edit or not ("the edit changed nothing")
    assert _recorded(env, payment["payment_id"]) == ([[hesh]], [[APPROVING_CARD[-4:]]])


def test_an_edited_link_racing_hyps_verified_notify_keeps_the_saved_cards_last4(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a payment with "keep my card", paid; Hyp's genuine notify arrives first and grants; its getToken is slow
    from payments.adapters.hypay import HypayClient

    payment = buy(env, save_card=True)
    paid = pay(env, payment)
    real = HypayClient.get_token
    edited_read_owed = threading.Event()
    calls: list[str] = []

    def get_token(self: HypayClient, transaction_id: str):  # type: ignore[no-untyped-def]
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "genuine":
            edited_read_owed.wait(10)  # the edited copy has read "card owed" meanwhile
            return real(self, transaction_id)
        edited_read_owed.set()
        token = real(self, transaction_id)
        genuine.join(10)  # the genuine delivery saved its card (with last4) first
        return token

    monkeypatch.setattr(HypayClient, "get_token", get_token)
    answers: dict[str, int] = {}
    genuine = threading.Thread(
        target=lambda: answers.__setitem__("genuine", notify(paid.redirect_query).status), name="genuine"
    )
    genuine.start()
    # wait until the genuine delivery has granted (and waits in getToken)
    for _ in range(200):
        if calls:
            break
        threading.Event().wait(0.05)
    # When the link's holder sends the edited link meanwhile (another fingerprint: the journal decides, outside the
    # idempotency claim, and the card is still owed)
    edited = threading.Thread(
        target=lambda: answers.__setitem__("edited", location(browser(_edited(paid.redirect_query)))[0]),
        name="edited",
    )
    edited.start()
    edited.join(20)
    genuine.join(20)
    assert answers == {"genuine": 200, "edited": SUCCESS_PAGE}
    # Then the saved card keeps the last 4 digits Hyp's verified delivery carried
    assert env.rows("SELECT last4 FROM saved_cards WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [
        [APPROVING_CARD[-4:]]
    ]


@pytest.mark.parametrize("edited_first", [False, True], ids=["verified-only", "signed-copy-first"])
def test_a_payment_the_web_app_completed_gets_no_invoice_from_a_later_delivery(
    env: Env, monkeypatch: pytest.MonkeyPatch, edited_first: bool
) -> None:
    # Given a payment the web app completed itself before this backend journaled it (it invoices in its own way)
    _invoices_on(monkeypatch)
    payment = buy(env)
    paid = pay(env, payment)
    env.rows(
        "UPDATE payments SET status = 'completed', hypay_transaction_id = :h, completed_at = now() WHERE id = :p::uuid",
        h=paid.id,
        p=payment["payment_id"],
    )
    if edited_first:
        # (the signed link with an unsigned field edited delivered first: settled on its Sign, journaled as granted
        # before)
        assert location(browser(_edited(paid.redirect_query)))[0] == SUCCESS_PAGE
    # When Hyp's verified delivery arrives, carrying the invoice number
    assert notify(paid.redirect_query).status == 200
    # Then it is journaled as granted before, and no invoice row is added for the web app's payment
    assert env.rows("SELECT decision FROM hypay_transactions WHERE hypay_id = :h", h=paid.id) == [["granted"]]
    assert env.rows("SELECT count(*) FROM invoices WHERE payment_id = :p::uuid", p=payment["payment_id"]) == [[0]]
