"""hypay_callback: GET /hypay/return (the browser redirect) and GET|POST /hypay/notify (Hyp's server notice)."""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response

from payments.adapters.db import QueryError, default_database
from payments.adapters.hypay import HypayClient
from payments.adapters.journal import Source
from payments.adapters.payments_store import PaymentsStore
from payments.domain import hypay as protocol
from payments.errors import ConfigurationError, DatabaseUnavailable, InvalidRequest
from payments.http import problem
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

app = APIGatewayHttpResolver()


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


def _keep_unverified(raw: str, notify: bool, reason: str) -> None:
    """Only the database is needed: the Hyp configuration may be what is broken."""
    try:
        db = default_database()
    except ConfigurationError:
        logger.error("unverified hypay callback not kept: the database is not configured")
        return
    keep_unverified(db, raw, source=Source.NOTIFY if notify else Source.REDIRECT, reason=reason)


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


_BROWSER = HypayVerification(_verification, notify=False, keep_unverified=_keep_unverified)
_SERVER = HypayVerification(_verification, notify=True, keep_unverified=_keep_unverified)


@app.get("/hypay/return", middlewares=[_BROWSER])
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
        return redirect(pages.pending_url, _order(raw))
    page = {Result.COMPLETED: pages.success_url, Result.FAILED: pages.failure_url, Result.REVIEW: pages.pending_url}
    return redirect(page.get(outcome.result, pages.failure_url), outcome.payment_id)


@app.route(
    "/hypay/notify",
    method=["GET", "POST"],
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
    logger.exception("hypay callback failed")
    return problem(500, "Internal Server Error", "the callback could not be processed")


lambda_handler = http_handler(app)
