"""One root error with a stable code; subclasses a caller can act on.

The HTTP mapping (problem+json) is `payments.http.error_response`, which each function's resolver uses.
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


class Unauthorized(PaymentError):
    """401: the request names no user (the authorizer's claims lack one)."""

    code = "unauthorized"


class NotFound(PaymentError):
    code = "not_found"


class Conflict(PaymentError):
    code = "conflict"


class AnotherChargeUnsettled(Conflict):
    """Another saved-card charge of the same user has no stored outcome yet (Hyp is being asked, or its answer was
    lost and the charge is being checked): the request is answered 409, stored for its key, nothing charged."""

    code = "another_charge_unsettled"


class ConfigurationError(PaymentError):
    """A setting is missing or malformed: a deployment problem, not the caller's."""

    code = "configuration_error"


class DatabaseUnavailable(PaymentError):
    """The database could not be reached, or the connection broke mid-way. Retryable."""

    code = "database_unavailable"
    retryable = True


class SecretUnavailable(PaymentError):
    """A secret of ours (the admin tokens) could not be read from Secrets Manager: ours, so "not yet". Retryable."""

    code = "secret_unavailable"
    retryable = True


class GatewayError(PaymentError):
    """Hypay said no, or could not be asked. `retryable` says whether asking again may help."""

    code = "gateway_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        ccode: int | None = None,
        gateway_message: str | None = None,
        transaction_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.ccode = ccode
        self.gateway_message = gateway_message
        self.transaction_id = transaction_id  # Hyp's Id, when its answer had one (a declined charge does)


class GatewayDeclined(GatewayError):
    """The card or token was declined (card-network codes, bad token, ...)."""

    code = "payment_declined"


class GatewayAuthenticationError(GatewayError):
    """Hyp refused our terminal's credentials or permissions (902, 901), or found our request invalid (400-402): a
    problem of ours (configuration, or a request we built) that moved no money, so "not yet", never a refusal of the
    customer."""

    code = "gateway_authentication_error"


class GatewayRejected(GatewayError):
    """Hyp refused the request itself (validation, duplicate, ...)."""

    code = "gateway_rejected"


class GatewayUnavailable(GatewayError):
    """Timeout, connection error, an HTML error page or Hyp's communication error. Retryable."""

    code = "gateway_unavailable"
    retryable = True


class OutcomeUnconfirmed(PaymentError):
    """A charge may have happened and its outcome could not be stored (the database failed after Hyp
    answered, or the outcome is unknown). The idempotency record is kept in progress, never deleted,
    so no retry can charge again; the caller is told the outcome is being confirmed."""

    code = "outcome_unconfirmed"
    keep_in_progress = True

    def __init__(self, message: str, *, payment_id: str, status: str = "pending") -> None:
        super().__init__(message)
        self.payment_id = payment_id
        self.status = status  # the payment's, as far as this invocation knows: pending, or needs_review once flagged


class GatewayNotAsked(GatewayError):
    """Hyp was not asked at all (our credentials could not be read: a secret outage, bad configuration).
    Nothing happened at Hyp; ours, so retryable."""

    code = "gateway_not_asked"
    retryable = True


class IdempotencyKeyReused(PaymentError):
    """422: the Idempotency-Key was used before with a different request."""

    code = "idempotency_key_reused"


class RequestInProgress(PaymentError):
    """409: the first request with this Idempotency-Key is still running."""

    code = "request_in_progress"
    retry_after = 2


class RateLimited(PaymentError):
    """429: too many requests of this kind for this caller; `retry_after` seconds until the window ends."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PackUnavailable(Conflict):
    """409: the credit pack exists but is no longer sold."""

    code = "pack_unavailable"
