"""Lambda SnapStart runtime hooks: nothing unique to one execution environment survives into a snapshot.

With SnapStart on (template parameter SnapStart=on), Lambda initializes a function once, snapshots the
environment and restores that snapshot for many environments. Whatever the initialization left in memory
would then be shared by all of them: an open database connection (one server session written to by many
environments), a claim held by the idempotency layer, the state of `random` (the same backoff jitter
everywhere). The hooks close every database connection before the snapshot and again after a restore (each
reconnects on its next statement), forget held claims, and reseed `random` from the OS after a restore.
`uuid.uuid4` and `secrets` read the OS's randomness each call, so claim ids and tokens stay unique anyway.

The hooks are registered with the Snapshot Restore for Python library that Lambda's Python runtimes include;
where it is absent (locally, in tests) nothing is registered and `before_snapshot` / `after_restore` can be
called directly.
"""

from __future__ import annotations

import random

from aws_lambda_powertools import Logger

logger = Logger(child=True)


def before_snapshot() -> None:
    # What a cold start leaves to the first request that needs it (the idempotency utility and boto3, the
    # Secrets Manager client) is imported here, into the snapshot: a restored environment never pays for it.
    import aws_lambda_powertools.utilities.parameters  # noqa: F401

    from payments.adapters.db import Database
    from payments.idempotency.persistence import PostgresPersistenceLayer

    closed = Database.close_all()
    PostgresPersistenceLayer.forget_all_claims()
    logger.info("snapstart: before snapshot", extra={"connections_closed": closed})


def after_restore() -> None:
    from payments.adapters.db import Database
    from payments.idempotency.persistence import PostgresPersistenceLayer

    closed = Database.close_all()
    PostgresPersistenceLayer.forget_all_claims()
    random.seed()  # from os.urandom: every restored environment draws its own numbers
    logger.info("snapstart: after restore", extra={"connections_closed": closed})


def register() -> bool:
    """Registers both hooks with Lambda's runtime; False where the library is absent (not on Lambda)."""
    try:
        from snapshot_restore_py import (  # type: ignore[import-not-found]
            register_after_restore,
            register_before_snapshot,
        )
    except ImportError:
        return False
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    return True


REGISTERED = register()
