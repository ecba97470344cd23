"""Idempotency for the payment functions: Powertools' utility on a PostgreSQL store."""

from payments.idempotency.persistence import PostgresPersistenceLayer, quote_table

__all__ = ["PostgresPersistenceLayer", "quote_table"]
