"""hypay_callback: GET /hypay/return (the browser redirect) and GET|POST /hypay/notify (Hyp's server notice)."""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

from aws_lambda_powertools.event_handler import Response

from payments.adapters.db import QueryError, default_database
from payments.adapters.hypay import HypayClient
from payments.adapters.journal import Journal, Source
from payments.adapters.payments_store import PaymentsStore
from payments.api_schema import (
    CALLBACK_FORM,
    CALLBACK_QUERY,
    FORM,
    problem_json,
    reads_itself,
    redirect_answer,
    retry_after,
    text_answer,
)
from payments.domain import hypay as protocol
from payments.errors import ConfigurationError, DatabaseUnavailable, InvalidRequest, PaymentError
from payments.http import HttpApi, problem, unhandled_error
from payments.hypay_middleware import HypayVerification, VerificationConfig, parse_allowlist, redirect
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import http_handler, logger
from payments.services.handle_callback import (
    CallbackInProgress,
    CallbackOutcome,
    HandleCallback,
    Result,
    keep_unverified,
)
from payments.settings import callback_settings, idempotency_settings

app = HttpApi()


@cache
def _verification() -> VerificationConfig:
    settings = callback_settings()
    allowlist = parse_allowlist(settings.notify_allowed_cidrs)
    if not allowlist:
        logger.warning("HYPAY_NOTIFY_ALLOWED_CIDRS is empty: /hypay/notify accepts any source address")
    return VerificationConfig(settings, allowlist, _gateway())


@cache
def _gateway() -> HypayClient:
    return HypayClient.from_settings()


@cache
def _service() -> HandleCallback:
    db = default_database()
    return HandleCallback(
        PaymentsStore(db), _gateway(), PostgresPersistenceLayer(idempotency_settings().table_name, database=db)
    )


def _keep_unverified(raw: str, notify: bool, reason: str, *, verified: bool = False) -> None:
    """Only the database is needed: the Hyp configuration may be what is broken. `verified`: a genuine one the
    database did not settle (read as its verification allows)."""
    try:
        db = default_database()
    except ConfigurationError:
        logger.error("unverified hypay callback not kept: the database is not configured")
        return
    keep_unverified(
        db,
        raw,
        source=Source.NOTIFY if notify else Source.REDIRECT,
        reason=reason,
        verified=verified,
        currency_trusted=bool(app.context.get("hypay_currency_trusted", True)),
    )


def _found_forged(raw: str) -> None:
    """A callback found forged: if it was kept unverified before (the same text), it is marked so (the mark alone
    changes nothing: it lets an operator fail the payment it holds, docs/operations.md). Best effort: the answer is
    the 403 / failure page whatever happens here."""
    try:
        hypay_id = Journal(default_database()).found_forged(raw)
    except PaymentError as exc:  # the database not configured or unavailable, or the statement refused
        logger.error("forged hypay callback not marked on its kept copy", extra={"reason": exc.code})
        return
    if hypay_id is not None:
        logger.warning("kept unverified hypay callback found forged", extra={"hypay_transaction_id": hypay_id})


def _order(raw: str) -> str | None:
    """The payment id the (verified) callback names, for the pages that say 'still confirming'."""
    order = protocol.decode_query(raw).get("Order", "")
    try:
        return str(UUID(order)) if len(order) == 36 else None
    except ValueError:
        return None


def _connection_test() -> Response[Any]:
    return Response(status_code=200, content_type="text/plain", body="OK")


def _handle(raw: str, source: Source) -> CallbackOutcome:
    return _service()(
        raw,
        source=source,
        currency_trusted=bool(app.context.get("hypay_currency_trusted", True)),
        context=app.lambda_context,
    )


_BROWSER = HypayVerification(_verification, notify=False, keep_unverified=_keep_unverified, found_forged=_found_forged)
_SERVER = HypayVerification(_verification, notify=True, keep_unverified=_keep_unverified, found_forged=_found_forged)


_CONNECTION_TEST = text_answer("`OK`: Hyp's portal connection test (no fields), or the callback was processed.")


@app.get(
    "/hypay/return",
    summary="The customer's browser back from Hyp's payment page",
    tags=["hypay"],
    responses={
        200: _CONNECTION_TEST,
        302: redirect_answer(
            "To the web app's success, failure or pending page (with payment_id when known): the failure page for a "
            "callback that is malformed or not genuine, the pending page while it cannot be verified or processed."
        ),
    },
    openapi_extensions=reads_itself(parameters=CALLBACK_QUERY),
    middlewares=[_BROWSER],
)
def hypay_return() -> Response[Any]:
    raw = app.context.get("hypay_raw")
    if raw is None:
        return _connection_test()
    pages = callback_settings()
    try:
        outcome = _handle(raw, Source.REDIRECT)
    except InvalidRequest as exc:
        logger.warning("hypay callback malformed", extra={"reason": exc.message})
        return redirect(pages.failure_url)
    except (CallbackInProgress, DatabaseUnavailable, ConfigurationError, QueryError) as exc:
        # Ours, not the customer's: the web app polls GET /payments/{id} until Hyp's notify or a reload lands.
        logger.warning("hypay callback not processed yet", extra={"reason": exc.code})
        if isinstance(exc, QueryError) and not exc.refused_for_good:
            # The database answered, but the statement did not pass this time (a lock wait, a conflict past its
            # retries, a timeout). Hyp may never send this again (a terminal without notifications, a customer who
            # never reloads): kept, so that the cleanup does not expire a paid payment and the queue shows it.
            # (Refused for good, it was kept already; the database out of reach, keeping would only wait again.)
            _keep_unverified(raw, False, f"verified, not processed yet: database error {exc.sqlstate}", verified=True)
        elif isinstance(exc, CallbackInProgress):
            # The delivery holding the claim may be one Lambda ended mid-work: its claim outlives it with nothing
            # written, and this may be the last delivery there is. Kept likewise (a live holder's journal row, once
            # committed, is left as it is: a kept copy overwrites nothing).
            _keep_unverified(raw, False, "verified, not processed yet: another delivery held it", verified=True)
        return redirect(pages.pending_url, _order(raw))
    page = {Result.COMPLETED: pages.success_url, Result.FAILED: pages.failure_url, Result.REVIEW: pages.pending_url}
    return redirect(page.get(outcome.result, pages.failure_url), outcome.payment_id)


_NOTIFY_ANSWERS: dict[int, Any] = {
    200: _CONNECTION_TEST,
    400: problem_json(
        "Not a Hypay callback (a malformed or repeated field, a field of our requests to Hyp, bytes outside ASCII), "
        "or one that can never be processed."
    ),
    403: problem_json("Not genuine (the signature or Hyp's VERIFY says so)."),
    404: problem_json("Order is not one of our payments (kept in the journal)."),
    409: problem_json("This Hyp transaction already paid another payment."),
    503: problem_json("Not verifiable or not processed yet (ours): send it again later.", headers=retry_after()),
}


@app.get(
    "/hypay/notify",
    summary="Hyp's server-to-server notification (query string)",
    tags=["hypay"],
    responses=_NOTIFY_ANSWERS,
    openapi_extensions=reads_itself(parameters=CALLBACK_QUERY),
    middlewares=[_SERVER],
)
@app.post(
    "/hypay/notify",
    summary="Hyp's server-to-server notification (form body)",
    tags=["hypay"],
    responses=_NOTIFY_ANSWERS,
    openapi_extensions=reads_itself(body=CALLBACK_FORM, media_type=FORM, body_required=False),
    middlewares=[_SERVER],
)
def hypay_notify() -> Response[Any]:
    raw = app.context.get("hypay_raw")
    if raw is None:
        return _connection_test()
    try:
        outcome = _handle(raw, Source.NOTIFY)
    except InvalidRequest as exc:
        return problem(400, "Bad Request", exc.message)
    except (CallbackInProgress, DatabaseUnavailable, ConfigurationError, QueryError) as exc:
        logger.warning("hypay notify not processed yet", extra={"reason": exc.code})
        return problem(
            503,
            "Service Unavailable",
            "the callback could not be processed yet; send it again later",
            headers={"Retry-After": "30"},
        )
    if outcome.result == Result.DUPLICATE:
        return problem(409, "Conflict", "this Hyp transaction already paid another payment")
    if outcome.result == Result.UNKNOWN_PAYMENT:
        # Journaled (a paid one raises the alarm): nothing Hyp can change by sending it again.
        return problem(404, "Not Found", "Order is not one of our payments")
    return Response(status_code=200, content_type="text/plain", body="OK")


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[Any]:
    # Nothing was granted (the work is atomic); Hyp's notify retries on 5xx, the browser sees an error.
    return unhandled_error("the callback could not be processed", "hypay callback failed")


lambda_handler = http_handler(app)
