"""The contract at a small size: schemathesis, with all its checks, against docs/openapi.json on make run's
stack, as a user, as two users who must not see each other's payments, as the admin, with the wrong token and
with none (`make prove` runs it at release size)."""

from __future__ import annotations

from proof import contract
from proof.stack import stack


def test_every_answer_is_in_the_contract() -> None:
    # Given make run's stack
    with stack() as running:
        # When schemathesis sends its examples, boundaries and fuzzed requests to every route, in every phase
        result = contract.run(running, examples=10)

    # Then every phase ran, every operation got requests, and every check judged them
    assert set(result.phases) == {"user", "peers", "admin", "crossed", "anonymous"}, result.counts()
    assert all(result.phases.values()), result.counts()
    assert set(contract.operations()) <= set(result.operations), result.counts()
    assert not set(contract.EXCLUDED_CHECKS) & set(result.checks), result.counts()
    assert 201 in result.statuses and 302 in result.statuses, result.counts()  # real work, not only refusals
    # And nothing answered a 5xx or anything the document does not say
    assert result.failures == [], "\n".join(map(str, result.failures))
