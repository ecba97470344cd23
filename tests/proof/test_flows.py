"""The saved-card and refund flows under faults at a small size: a few users each keep a card, charge it, and
refund, while Hyp's answers are lost, dropped, failed or slow, the database connections are terminated and the
workers killed; then the money invariants (`make prove` runs it at release size)."""

from __future__ import annotations

from proof import flows
from proof.stack import stack


def test_saved_cards_and_refunds_under_faults_keep_the_money_right() -> None:
    # Given make run's stack
    with stack(flows.SETTINGS) as running:
        # When a user per kind of Hyp fault (each round's first charge gets its round's kind: with fewer rounds than
        # kinds, the last kind depended on random draws) each pays once keeping the card, charges it 2-4 times and
        # refunds, every kind of Hyp fault and of ours landing on the charges and on the refunds, clients retrying
        # with the same key
        result = flows.run(running, rounds=len(flows.HYP_FAULTS), seed=None)

    # Then every kind of fault was armed
    faults = result.faults
    for kind in flows.HYP_FAULTS:
        assert any(name.startswith(f"soft {kind}") for name in faults), result.summary()
    assert faults["kill CreatePaymentFunction"] >= 1 and faults["kill AdminFunction"] >= 1, result.summary()
    assert faults["database terminate"] >= 1 and faults["database terminations for 0.5 s"] >= 1, result.summary()
    assert result.charges >= 10 and result.refunds >= 5, result.summary()
    # And nothing answered a 500 or anything outside the contract, Hyp charged each key at most once, every paid
    # transaction is granted once or in review, and every refund Hyp made is recorded or in review
    assert result.ok, result.summary()
