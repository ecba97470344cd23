"""Acting on a verified Hypay callback (browser redirect or server notification): exactly once per Hyp `Id`.

The redirect, its reloads and the notification all carry the same parameters. They are made
idempotent on Hyp's transaction `Id` with the Powertools utility on the Postgres store, validated on
the fields that say what happened (`Order`, `Amount`, `Coin`, `CCode`): whichever arrives first does
the work, the others get its outcome. Under that, `complete_payment` and the database's unique
constraints make a second grant impossible even if the idempotency record were gone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from payments.adapters.hypay import HypayClient
from payments.adapters.payments_store import PaymentsStore
from payments.domain import hypay as protocol
from payments.domain.money import CURRENCY_OF_COIN, Money
from payments.errors import DatabaseUnavailable, GatewayError, InvalidRequest, PaymentError
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import metrics
from payments.services.complete_payment import Outcome, complete_payment

logger = logging.getLogger(__name__)

_HYP_ID = re.compile(r"^[0-9]{1,20}$")


class Result(StrEnum):
    COMPLETED = "completed"  # paid; credits granted (now or by an earlier delivery)
    FAILED = "failed"  # Hyp did not charge (declined, cancelled, J5 authorization, postponed ...)
    REVIEW = "review"  # paid, but something is off (amount, payment no longer pending): a human looks
    DUPLICATE = "duplicate"  # this Hyp transaction already belongs to another payment: rejected
    UNKNOWN_PAYMENT = "unknown_payment"  # Order is not one of our payments


@dataclass(frozen=True)
class CallbackOutcome:
    result: Result
    payment_id: UUID | None


class CallbackInProgress(PaymentError):
    """Another delivery of the same transaction is being processed right now."""

    code = "callback_in_progress"


@dataclass(frozen=True)
class Callback:
    """The fields of a verified callback that processing relies on."""

    transaction_id: str
    payment_id: UUID
    ccode: int
    amount: Money
    approval_code: str
    invoice_number: str | None
    last4: str | None
    message: str | None

    @classmethod
    def parse(cls, raw_query: str) -> Callback:
        """Validate the format of what Hyp sent: `Id` digits, `Order` one of our ids, `CCode` a number."""
        fields = protocol.decode_query(raw_query)
        transaction_id = fields.get("Id", "")
        if not _HYP_ID.match(transaction_id):
            raise InvalidRequest("Id is not a Hyp transaction id")
        try:
            payment_id = UUID(fields.get("Order", ""))
        except ValueError:
            raise InvalidRequest("Order is not one of our payment ids") from None
        try:
            ccode = int(fields.get("CCode", ""))
        except ValueError:
            raise InvalidRequest("CCode is not a number") from None
        currency = CURRENCY_OF_COIN.get(fields.get("Coin", "1") or "1")
        if currency is None:
            raise InvalidRequest("Coin is not a known currency")
        try:
            amount = Money.of(fields.get("Amount", ""), currency)
        except (InvalidRequest, TypeError):
            raise InvalidRequest("Amount is not an amount") from None
        hesh = fields.get("Hesh", "")
        last4 = fields.get("L4digit", "")
        return cls(
            transaction_id=transaction_id,
            payment_id=payment_id,
            ccode=ccode,
            amount=amount,
            approval_code=fields.get("ACode", ""),
            invoice_number=hesh if hesh not in ("", "0") else None,
            last4=last4 if re.fullmatch(r"[0-9]{4}", last4) else None,
            message=protocol.redact(fields.get("errMsg", "").strip()) or None,
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "order": str(self.payment_id),
            "amount": str(self.amount.amount),
            "currency": str(self.amount.currency),
            "ccode": self.ccode,
        }


class HandleCallback:
    """`HandleCallback(store, gateway, persistence)(raw_query)` -> the outcome, the same for every delivery."""

    def __init__(
        self,
        store: PaymentsStore,
        gateway: HypayClient,
        persistence: PostgresPersistenceLayer,
        *,
        expires_after_seconds: int = 7 * 86400,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.config = IdempotencyConfig(
            event_key_jmespath="transaction_id",
            payload_validation_jmespath="fingerprint",
            expires_after_seconds=expires_after_seconds,
            raise_on_no_idempotency_key=True,
        )
        self._once = idempotent_function(
            data_keyword_argument="delivery",
            config=self.config,
            persistence_store=persistence,
            key_prefix="hypay_callback",
        )(self._process)

    def __call__(self, raw_query: str, *, context: Any = None) -> CallbackOutcome:
        callback = Callback.parse(raw_query)
        if context is not None:
            self.config.register_lambda_context(context)
        delivery = {"transaction_id": callback.transaction_id, "fingerprint": callback.fingerprint()}
        try:
            stored = self._once(delivery=delivery, callback=callback)
        except IdempotencyValidationError:
            # The same Hyp transaction, but for another payment or amount: never a second grant.
            metrics.add_metric(name="DuplicateTransaction", unit=MetricUnit.Count, value=1)
            logger.error(
                "hyp transaction id reused",
                extra={"hypay_transaction_id": callback.transaction_id, "payment_id": str(callback.payment_id)},
            )
            return CallbackOutcome(Result.DUPLICATE, None)
        except IdempotencyAlreadyInProgressError:
            raise CallbackInProgress("another delivery of this transaction is being processed") from None
        except IdempotencyPersistenceLayerError as exc:
            raise DatabaseUnavailable("the payment store is unavailable") from exc
        payment = stored.get("payment_id")
        return CallbackOutcome(Result(stored["result"]), UUID(payment) if payment else None)

    # -- the work, once per Hyp transaction ------------------------------------------------------

    def _process(self, delivery: dict[str, Any], callback: Callback) -> dict[str, Any]:
        outcome = self._decide(callback)
        logger.info(
            "hypay callback processed",
            extra={
                "hypay_transaction_id": callback.transaction_id,
                "payment_id": str(callback.payment_id),
                "ccode": callback.ccode,
                "result": str(outcome.result),
            },
        )
        return {"result": str(outcome.result), "payment_id": str(outcome.payment_id) if outcome.payment_id else None}

    def _decide(self, callback: Callback) -> CallbackOutcome:
        pid = callback.payment_id
        if callback.ccode != protocol.APPROVED:
            message = protocol.ccode_message(callback.ccode)
            detail = f"{message}: {callback.message}" if callback.message else message
            if self.store.mark_failed(pid, ccode=callback.ccode, message=detail):
                metrics.add_metric(name="PaymentsFailed", unit=MetricUnit.Count, value=1)
                return CallbackOutcome(Result.FAILED, pid)
            payment = self.store.get(pid)
            if payment is None:
                return self._unknown(callback)
            # Already settled: a failure redirect cannot undo a completed payment.
            return CallbackOutcome(Result.COMPLETED if payment.status == "completed" else Result.FAILED, pid)

        completion = complete_payment(
            self.store.db,
            payment_id=pid,
            transaction_id=callback.transaction_id,
            amount=callback.amount,
            approval_code=callback.approval_code,
            invoice_number=callback.invoice_number,
        )
        match completion.outcome:
            case Outcome.COMPLETED:
                metrics.add_metric(name="PaymentsCompleted", unit=MetricUnit.Count, value=1)
                metrics.add_metric(name="CreditsGranted", unit=MetricUnit.Count, value=completion.credits_granted)
                if completion.save_card and completion.user_id is not None:
                    self._save_card(callback, completion.user_id)
                return CallbackOutcome(Result.COMPLETED, pid)
            case Outcome.ALREADY_COMPLETED:
                return CallbackOutcome(Result.COMPLETED, pid)
            case Outcome.AMOUNT_MISMATCH:
                metrics.add_metric(name="AmountMismatch", unit=MetricUnit.Count, value=1)
                logger.error(
                    "amount mismatch",
                    extra={
                        "payment_id": str(pid),
                        "hypay_transaction_id": callback.transaction_id,
                        "paid": str(callback.amount),
                    },
                )
                return CallbackOutcome(Result.REVIEW, pid)
            case Outcome.DUPLICATE_TRANSACTION:
                metrics.add_metric(name="DuplicateTransaction", unit=MetricUnit.Count, value=1)
                logger.error(
                    "hyp transaction id reused",
                    extra={"payment_id": str(pid), "hypay_transaction_id": callback.transaction_id},
                )
                return CallbackOutcome(Result.DUPLICATE, None)
            case Outcome.NOT_PENDING:
                # Hyp took the money for a payment we had given up on (expired, failed): never lose it.
                self.store.flag_paid_late(pid, callback.transaction_id)
                metrics.add_metric(name="PaidNotPending", unit=MetricUnit.Count, value=1)
                logger.error(
                    "payment paid while not pending",
                    extra={"payment_id": str(pid), "hypay_transaction_id": callback.transaction_id},
                )
                return CallbackOutcome(Result.REVIEW, pid)
            case _:
                return self._unknown(callback)

    def _unknown(self, callback: Callback) -> CallbackOutcome:
        metrics.add_metric(name="UnknownPayment", unit=MetricUnit.Count, value=1)
        logger.error("callback for an unknown payment", extra={"hypay_transaction_id": callback.transaction_id})
        return CallbackOutcome(Result.UNKNOWN_PAYMENT, None)

    def _save_card(self, callback: Callback, user_id: UUID) -> None:
        """After success, the buyer having opted in: fetch Hyp's token and keep it (never the card number)."""
        try:
            token = self.gateway.get_token(callback.transaction_id)
        except GatewayError as exc:
            # The payment stands; only the convenience is lost. Counted, not raised.
            metrics.add_metric(name="CardNotSaved", unit=MetricUnit.Count, value=1)
            logger.warning("card token not saved", extra={"payment_id": str(callback.payment_id), "code": exc.code})
            return
        self.store.save_card(
            user_id=user_id,
            payment_id=callback.payment_id,
            token=token.value,
            expiry_month=token.expiry_month,
            expiry_year=token.expiry_year,
            last4=callback.last4,
        )
