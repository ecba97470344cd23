"""The chaos part of the proof at a small size: a few hundred callbacks under database terminations, worker
kills and VERIFY outages, then the money invariants (`make prove` runs it at release size)."""

from __future__ import annotations

from proof import chaos
from proof.stack import stack


def test_callbacks_under_chaos_grant_exactly_once() -> None:
    # Given make run's stack, and 30 payments of 4 users paid (or declined, or left unpaid) on the simulator
    with stack(chaos.SETTINGS) as running:
        # When 450 callbacks arrive duplicated, concurrent and out of order while the database connections are
        # terminated, the callback's workers killed and Hyp's VERIFY failing, and then Hyp's retries settle
        result = chaos.run(running, deliveries=450, payments=30, users=4, seed=None)

    # Then every blow landed, nothing answered a 500 or anything outside the contract, and the money adds up
    assert result.db_terminations >= 3 and result.worker_kills >= 3 and result.verify_outages >= 3, result.summary()
    assert result.deliveries == 450, result.summary()
    assert result.ok, result.summary()
