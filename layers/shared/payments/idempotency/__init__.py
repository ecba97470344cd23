"""Idempotency for the payment functions: Powertools' utility on a PostgreSQL store."""

from payments.idempotency.persistence import PostgresPersistenceLayer

__all__ = ["PostgresPersistenceLayer"]
