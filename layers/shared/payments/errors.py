"""One root error with a stable code; subclasses a caller can act on.

The HTTP mapping (problem+json) lives next to each resolver, not here.
"""

from __future__ import annotations


class PaymentError(Exception):
    """Root of every error this package raises on purpose."""

    code = "payment_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(PaymentError):
    code = "invalid_request"


class NotFound(PaymentError):
    code = "not_found"


class Conflict(PaymentError):
    code = "conflict"


class ConfigurationError(PaymentError):
    """A setting is missing or malformed: a deployment problem, not the caller's."""

    code = "configuration_error"


class DatabaseUnavailable(PaymentError):
    """The database could not be reached, or the connection broke mid-way. Retryable."""

    code = "database_unavailable"
    retryable = True
