"""The functions' tracer: Powertools' Tracer (X-Ray) when tracing is on, a stand-in that does nothing when off.

Building a Powertools Tracer imports the X-Ray SDK (a quarter of a second of a cold start here), even when
tracing is disabled. With tracing off (POWERTOOLS_TRACE_DISABLED, outside Lambda) nothing of X-Ray is imported;
with it on (the template's `Tracing: Active`), the real Tracer, as before. Only what the code uses is offered:
`capture_lambda_handler` and `provider.in_subsegment`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from payments.settings import tracing_enabled


class _Subsegment:
    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None


class _Provider:
    @contextlib.contextmanager
    def in_subsegment(self, name: str, **_: Any) -> Iterator[_Subsegment]:
        yield _Subsegment()


class _NoTracer:
    """Tracing off: the handler is called as it is; subsegments are not recorded."""

    provider = _Provider()

    def capture_lambda_handler(self, lambda_handler: Callable[..., Any] | None = None, **_: Any) -> Callable[..., Any]:
        if lambda_handler is None:
            return functools.partial(self.capture_lambda_handler)
        return lambda_handler


def _tracer() -> Any:
    if not tracing_enabled():
        return _NoTracer()
    from aws_lambda_powertools import Tracer

    return Tracer()


tracer: Any = _tracer()
