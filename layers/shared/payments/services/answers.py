"""Storing Hyp's answer to an irreversible call (a saved-card charge, a refund).

After the call nothing may raise before Hyp's answer is stored. The statements that store it are one transaction
that re-reads what it decides on (`Database.atomic`): it already runs again after a conflict or a broken
connection. A statement the database did not pass this time for another reason that passes by itself (a lock wait
or the statement's timeout, a conflict past its retries) rolled the transaction back, so running the whole work
again is safe too; it is, a few times, while the invocation has time left. One refused for good (a constraint, a
trigger) is not: the caller's fallback (review, naming Hyp's transaction) takes over.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from payments import deadline
from payments.adapters.db import QueryError
from payments.observability import logger

ATTEMPTS = 3
# Another statement is tried only with at least this much of the invocation left (the deadline's reserve included):
# less, and Lambda may end it midway (harmless: rolled back), but the caller's fallback would not run either.
MARGIN_SECONDS = 1.0


# The caller's fallback (one short transaction: review naming Hyp's transaction, or its answer in words) is tried with
# at least this much left; the database cuts its lock wait and time to what is left (Database._begin).
FALLBACK_SECONDS = 0.25


def time_for_another() -> bool:
    """Whether the invocation has time left for another attempt at storing (always, outside an invocation): one that
    leaves MARGIN_SECONDS, enough for the fallback after it."""
    left = deadline.until_the_end()
    return left is None or left > MARGIN_SECONDS


def time_for_the_fallback() -> bool:
    """Whether the invocation has time left for the caller's fallback (always, outside an invocation)."""
    left = deadline.until_the_end()
    return left is None or left > FALLBACK_SECONDS


def store_answer[T](store_it: Callable[[], T]) -> T:
    """`store_it()`, run again (at most ATTEMPTS in all) while the database does not pass it for a reason that
    passes and time is left; the last error is raised."""
    attempt = 1
    while True:
        try:
            return store_it()
        except QueryError as exc:
            if exc.refused_for_good or attempt >= ATTEMPTS or not time_for_another():
                raise
            logger.warning(
                "hyp's answer not stored yet: storing it again", extra={"sqlstate": exc.sqlstate, "attempt": attempt}
            )
            time.sleep(0.05 * attempt)
            attempt += 1
