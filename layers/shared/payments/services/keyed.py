"""What every Idempotency-Key operation shares: its Powertools configuration on the Postgres store, and
the answer it stores and replays (status, JSON body, and whether it is a replay)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceConsistencyError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from payments.errors import Conflict, DatabaseUnavailable, IdempotencyKeyReused, RequestInProgress
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import logger
from payments.records import Record


class Answer(Record):
    """An HTTP answer of a service: status, JSON body, and whether it is a replay."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**response, "replayed": True}


def _as_stored(body: Any) -> Any:
    """The body as a replay returns it: the idempotency utility stores answers with sorted keys, so the first
    answer's keys are put in the same order, and a replay's response is the first one byte for byte."""
    return json.loads(json.dumps(body, sort_keys=True))


class Keyed:
    """`Keyed(work, ...)(context, scope=..., **beside)` -> the Answer: `work(scope=..., **beside)` run at most
    once per the scope's `key` (a JMESPath), the request checked by `validate` on a replay (the stored answer
    comes back with `replayed`). What is `beside` the scope is neither hashed nor stored (a CVV, the admin).
    The idempotency utility's errors become the ones a caller acts on: 422, 409 with Retry-After, 503."""

    def __init__(
        self,
        work: Callable[..., dict[str, Any]],
        *,
        persistence: PostgresPersistenceLayer,
        key: str,
        validate: str,
        prefix: str,
        expires_after_seconds: int,
        what: str = "request",
    ) -> None:
        self.config = IdempotencyConfig(
            event_key_jmespath=key,
            payload_validation_jmespath=validate,
            expires_after_seconds=expires_after_seconds,
            raise_on_no_idempotency_key=True,
            response_hook=_mark_replayed,
        )
        self._run = idempotent_function(
            data_keyword_argument="scope", config=self.config, persistence_store=persistence, key_prefix=prefix
        )(work)
        self.what = what

    def __call__(self, context: Any, *, scope: dict[str, Any], **beside: Any) -> Answer:
        if context is not None:
            self.config.register_lambda_context(context)
        try:
            result = self._run(scope=scope, **beside)
        except IdempotencyValidationError:
            raise IdempotencyKeyReused(
                f"this Idempotency-Key was already used with a different {self.what}; use a new key"
            ) from None
        except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
            # (The record changed under the claim past Powertools' retries: another request is at it; not yet.)
            raise RequestInProgress(f"a {self.what} with this Idempotency-Key is still being processed") from None
        except IdempotencyPersistenceLayerError as exc:
            if isinstance(exc.__cause__, IdempotencyPersistenceConsistencyError):
                # The key is held by a row another system (the web app) wrote: retrying can never succeed.
                logger.error("idempotency key held by a foreign record", extra={"reason": str(exc.__cause__)})
                raise Conflict(
                    f"this Idempotency-Key is held by a record this service did not write; use a new key for the "
                    f"{self.what}"
                ) from None
            raise DatabaseUnavailable("the payment store is unavailable; retry with the same key") from exc
        return Answer(result["status"], _as_stored(result["body"]), bool(result.get("replayed")))
