"""SnapStart: environments restored from one snapshot share no database connection, claim or random state.

Simulated in-process as Lambda runs it: initialize and warm the function, run the before-snapshot hooks, keep
what memory holds (the snapshot), then restore it twice, each time running the after-restore hooks first."""

from __future__ import annotations

import random
import sys
import types

import pytest

from payments import snapstart
from payments.adapters.db import default_database
from payments.idempotency import PostgresPersistenceLayer
from tests.support.payments import STARTER, Env, post


def backend_pid() -> int:
    return int(default_database().run("SELECT pg_backend_pid()")[0][0])


def test_a_restored_environment_opens_its_own_connection_and_draws_its_own_numbers(env: Env) -> None:
    # Given a warm function: its connection open, a claim held by the idempotency layer
    assert post({"credit_pack_id": STARTER}, key="snap-1").status == 201
    db = default_database()
    initialized_pid = backend_pid()
    layer = PostgresPersistenceLayer(database=db)
    layer._remember_claim("held#key", "11111111-1111-4111-8111-111111111111")

    # When Lambda takes the snapshot
    snapstart.before_snapshot()
    # Then no connection and no claim go into it
    assert db._conn is None and layer._claim_of("held#key") is None
    snapshot = random.getstate()

    pids, draws = [], []
    for _ in range(2):
        # When an environment is restored from that snapshot (memory as it was) and handles a request
        random.setstate(snapshot)
        snapstart.after_restore()
        draws.append(random.random())
        connects = db.connects
        assert post({"credit_pack_id": STARTER}, key="snap-1").status == 201  # a replay: one statement
        # Then it opened a connection of its own
        assert db.connects == connects + 1
        pids.append(backend_pid())
        snapstart.before_snapshot()  # the next restore starts from the snapshot, not from this environment

    assert initialized_pid not in pids and pids[0] != pids[1]
    # And the two restored environments draw different numbers (backoff jitter, anything random)
    assert draws[0] != draws[1]


def test_the_hooks_are_registered_with_lambdas_runtime_library(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the Snapshot Restore for Python library, as Lambda's Python runtimes include it
    before: list = []
    after: list = []
    library = types.ModuleType("snapshot_restore_py")
    library.register_before_snapshot = before.append  # type: ignore[attr-defined]
    library.register_after_restore = after.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", library)
    # When the package registers its hooks / Then both are registered, once each
    assert snapstart.register() is True
    assert before == [snapstart.before_snapshot] and after == [snapstart.after_restore]
    # And without the library (locally) nothing is registered, nothing fails
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)
    assert snapstart.register() is False


def test_what_a_cold_start_leaves_to_the_first_request_goes_into_the_snapshot() -> None:
    # Given a process where neither the idempotency utility, boto3 nor the secrets client is imported yet
    import subprocess

    code = (
        "import sys\n"
        "from payments import snapstart\n"
        "utilities = 'aws_lambda_powertools.utilities.'\n"
        "heavy = ('boto3', utilities + 'parameters', utilities + 'idempotency')\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "snapstart.before_snapshot()\n"
        "print(before, [m for m in heavy if m not in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # When the before-snapshot hook runs, then all of them are in memory (the snapshot) afterwards
    assert done.stdout.strip() == "[] []"
