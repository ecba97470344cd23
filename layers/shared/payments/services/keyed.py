"""What every Idempotency-Key operation shares: its Powertools configuration on the Postgres store, and
the answer it stores and replays (status, JSON body, and whether it is a replay)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from payments.idempotency import PostgresPersistenceLayer


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of a service: status, JSON body, and whether it is a replay."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**response, "replayed": True}


def keyed(
    work: Callable[..., dict[str, Any]],
    *,
    persistence: PostgresPersistenceLayer,
    key: str,
    validate: str,
    prefix: str,
    expires_after_seconds: int,
) -> tuple[IdempotencyConfig, Callable[..., dict[str, Any]]]:
    """`work(scope=...)` run at most once per the scope's `key` (a JMESPath), the request checked by
    `validate` on a replay; the stored answer comes back with `replayed: True`."""
    config = IdempotencyConfig(
        event_key_jmespath=key,
        payload_validation_jmespath=validate,
        expires_after_seconds=expires_after_seconds,
        raise_on_no_idempotency_key=True,
        response_hook=_mark_replayed,
    )
    run = idempotent_function(
        data_keyword_argument="scope", config=config, persistence_store=persistence, key_prefix=prefix
    )(work)
    return config, run
