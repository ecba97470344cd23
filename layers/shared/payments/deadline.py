"""The time the current invocation has left, for the calls that must fit in it (Hyp's).

The Lambda entry point (`observability.http_handler`) starts it from the context; a call that waits on a network
asks `seconds_left()` first. One invocation at a time per execution environment: a module value suffices. Outside
an invocation (tools, tests calling a service directly) there is no deadline: None.
"""

from __future__ import annotations

import time
from typing import Any

# Kept back from the Lambda timeout for what follows the last call: storing its answer, the response, the logs and
# metrics. An answer Hyp gave must be stored before the invocation is killed (the money rules).
RESERVE_SECONDS = 2.0

_deadline: float | None = None


def start(context: Any) -> None:
    """Start the invocation's deadline from its Lambda context (none when it cannot tell its remaining time)."""
    global _deadline
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    try:
        millis = remaining() if callable(remaining) else None
    except Exception:  # noqa: BLE001 - a context that cannot tell: no deadline, as outside Lambda
        millis = None
    _deadline = time.monotonic() + millis / 1000 - RESERVE_SECONDS if isinstance(millis, int | float) else None


def narrow(seconds_until_the_end: float) -> None:
    """The invocation's caller gives up sooner than Lambda ends it (API Gateway answers 503 thirty seconds after the
    request arrived, the function running on): its end, `seconds_until_the_end` from now, becomes the invocation's
    when sooner. What is written after the work (an audit row) is then sent with limits that fit before it."""
    global _deadline
    narrowed = time.monotonic() + seconds_until_the_end - RESERVE_SECONDS
    _deadline = narrowed if _deadline is None else min(_deadline, narrowed)


def clear() -> None:
    """The invocation is over: no deadline until the next one starts (code run between invocations has none)."""
    global _deadline
    _deadline = None


def seconds_left() -> float | None:
    """Seconds until the invocation's deadline (may be negative), None without one."""
    return None if _deadline is None else _deadline - time.monotonic()


def until_the_end() -> float | None:
    """Seconds until Lambda ends the invocation (its deadline and the reserve after it), None without a deadline: what
    the work after the last call (storing its answer, a fallback) has left."""
    left = seconds_left()
    return None if left is None else left + RESERVE_SECONDS
