"""The callback fuzzer of the proof at a small size: a few hundred hypothesis examples over `/hypay/return` and
`/hypay/notify` (`make prove` runs it at release size, with a random seed)."""

from __future__ import annotations

from proof import callback_fuzz
from proof.stack import stack

# Fixed, so that `make test` sends the same plans every run (applied to that run's own payments).
SEED = 20_250_613


def test_mutated_and_random_callbacks_never_5xx_and_a_refusal_writes_nothing() -> None:
    # Given make run's stack, and real payments paid on the simulator (approved, declined, a second charge, a
    # windows-1255 page, odd customer names)
    with stack() as running:
        # When 300 mutated and random callbacks arrive as queries and bodies of every content type
        result = callback_fuzz.run(running, examples=300, seed=SEED)

    # Then every request was answered within the contract, genuine ones were processed once, refused ones
    # changed no table, and the money adds up
    summary = "\n".join([str(result.counts()), *result.failures[:20]])
    assert result.requests == 300, summary
    assert result.first_deliveries >= 5 and result.outcomes["refused"] >= 100, summary
    assert result.outcomes["processed"] >= 20 and result.views["poison"] >= 10, summary
    assert not result.failures, summary
