"""Creating a payment for a signed-in user: idempotent on (user, Idempotency-Key).

The IETF `Idempotency-Key` draft, and Stripe's behaviour where it is silent: the same key with the
same request replays the first answer (status and body) without doing anything again; the same key
with another request is refused; while the first is still running, the next is told to retry later.
Failures that may be retried (the gateway, the database, the rate limit) are not stored, so a retry
with the same key runs again, reusing the pending payment the interrupted attempt left.

A saved-card charge is the exception that proves the rule: once Hyp has been asked to charge, the
answer is stored whatever it was (approved, declined, or unknown because the call timed out), so a
retry can never charge the card twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from payments.adapters.hypay import Customer, HypayClient, PaymentPage, Token
from payments.adapters.payments_store import Pack, PaymentsStore, Profile
from payments.domain.payment import CreatePaymentRequest, PaymentStatus
from payments.errors import (
    Conflict,
    DatabaseUnavailable,
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayError,
    GatewayUnavailable,
    IdempotencyKeyReused,
    NotFound,
    PackUnavailable,
    RateLimited,
    RequestInProgress,
)
from payments.idempotency import PostgresPersistenceLayer
from payments.services.complete_payment import Outcome, complete_payment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the service: status, JSON body, and whether it is a replay."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass
class CreatePaymentDeps:
    store: PaymentsStore
    gateway: HypayClient
    rate_limit: int = 10  # creations per user per window
    rate_window_seconds: int = 60
    page_language: str = "HEB"
    send_invoice: bool = False


def _scoped_key(user_id: UUID, key: str) -> str:
    """The value kept in payments.idempotency_key: unique across users (the column's constraint is global)."""
    return f"api:{user_id}:{key}"


def _customer(profile: Profile) -> Customer:
    first, _, last = (profile.full_name or "").strip().partition(" ")
    return Customer(first_name=first, last_name=last, email=profile.email or "")


def _view(payment_id: UUID, pack: Pack, url: str | None, status: PaymentStatus) -> dict[str, Any]:
    return {
        "payment_id": str(payment_id),
        "payment_url": url,
        "amount": f"{pack.price.amount:.2f}",
        "currency": str(pack.price.currency),
        "credits": pack.credits,
        "status": str(status),
    }


def _problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}


class CreatePayment:
    """`CreatePayment(deps, persistence)(user_id=..., idempotency_key=..., request=..., context=...)`."""

    def __init__(
        self, deps: CreatePaymentDeps, persistence: PostgresPersistenceLayer, *, expires_after_seconds: int = 86400
    ) -> None:
        self.deps = deps
        self.config = IdempotencyConfig(
            event_key_jmespath="[user_id, key]",
            payload_validation_jmespath="request",
            expires_after_seconds=expires_after_seconds,
            raise_on_no_idempotency_key=True,
            response_hook=self._mark_replayed,
        )
        self._run = idempotent_function(
            data_keyword_argument="scope",
            config=self.config,
            persistence_store=persistence,
            key_prefix="create_payment",
        )(self._create)

    @staticmethod
    def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
        return {**response, "replayed": True}

    def __call__(
        self, *, user_id: UUID, idempotency_key: str, request: CreatePaymentRequest, context: Any = None
    ) -> Answer:
        if context is not None:
            self.config.register_lambda_context(context)
        scope = {"user_id": str(user_id), "key": idempotency_key, "request": request.fingerprint()}
        try:
            # The CVV travels beside the scope, never inside it: not hashed, not stored.
            result = self._run(scope=scope, cvv=request.cvv)
        except IdempotencyValidationError:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used with a different request; use a new key"
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise RequestInProgress("a request with this Idempotency-Key is still being processed") from None
        except IdempotencyPersistenceLayerError as exc:
            raise DatabaseUnavailable("the payment store is unavailable; retry with the same key") from exc
        return Answer(result["status"], result["body"], bool(result.get("replayed")))

    # -- the work, run at most once per (user, key) ----------------------------------------------

    def _create(self, scope: dict[str, Any], cvv: str | None) -> dict[str, Any]:
        user_id = UUID(scope["user_id"])
        request = CreatePaymentRequest.model_validate(scope["request"])
        store = self.deps.store

        count, retry_after = store.hit_rate_limit(f"create_payment:{user_id}", self.deps.rate_window_seconds)
        if count > self.deps.rate_limit:
            raise RateLimited(
                f"at most {self.deps.rate_limit} payments per {self.deps.rate_window_seconds} s; retry later",
                retry_after,
            )
        pack, profile = store.pack_and_profile(request.credit_pack_id, user_id)
        if pack is None:
            raise NotFound(f"credit pack {request.credit_pack_id} does not exist")
        if not pack.active:
            raise PackUnavailable(f"credit pack {request.credit_pack_id} is no longer sold")
        if profile is None:
            raise NotFound("the signed-in user has no profile")
        card = store.saved_card(user_id) if request.saved_card else None
        if request.saved_card and card is None:
            raise Conflict("there is no saved card for this user; pay on the payment page instead")

        payment_id = store.open_pending(
            user_id=user_id,
            pack=pack,
            idempotency_key=_scoped_key(user_id, scope["key"]),
            save_card=request.save_card,
        )
        if payment_id is None:
            raise IdempotencyKeyReused("this Idempotency-Key already belongs to another payment; use a new key")

        if card is not None:
            return self._charge_saved_card(
                payment_id, pack, profile, Token(card.token, card.expiry_month, card.expiry_year), cvv
            )
        page = PaymentPage(
            pack.price,
            str(payment_id),
            pack.name,
            _customer(profile),
            self.deps.page_language,
            invoice=self.deps.send_invoice,
        )
        url = self.deps.gateway.payment_page_url(page)  # a failure raises: nothing stored, a retry runs again
        store.set_payment_url(payment_id, url)
        logger.info("payment created", extra={"payment_id": str(payment_id), "credit_pack_id": str(pack.id)})
        return {"status": 201, "body": _view(payment_id, pack, url, PaymentStatus.PENDING)}

    def _charge_saved_card(
        self, payment_id: UUID, pack: Pack, profile: Profile, token: Token, cvv: str | None
    ) -> dict[str, Any]:
        store = self.deps.store
        try:
            charge = self.deps.gateway.charge_token(
                token,
                amount=pack.price,
                order=str(payment_id),
                description=pack.name,
                customer=_customer(profile),
                cvv=cvv,
            )
        except GatewayDeclined as exc:
            store.mark_failed(payment_id, ccode=exc.ccode, message=exc.gateway_message)
            logger.info("saved card declined", extra={"payment_id": str(payment_id), "ccode": exc.ccode})
            return {
                "status": 402,
                "body": _problem(
                    402,
                    "Payment Declined",
                    f"the card was declined: {exc.gateway_message}",
                    payment_id=str(payment_id),
                    ccode=exc.ccode,
                    gateway_message=exc.gateway_message,
                ),
            }
        except GatewayAuthenticationError:
            raise  # nothing was charged; a configuration problem: not stored, the retry may run
        except GatewayUnavailable:
            # Hyp may or may not have charged: never ask again blindly. The payment waits for review.
            store.flag_for_review(payment_id, "saved-card charge outcome unknown (gateway unavailable)")
            logger.warning("saved card charge outcome unknown", extra={"payment_id": str(payment_id)})
            return {
                "status": 502,
                "body": _problem(
                    502,
                    "Bad Gateway",
                    "the payment gateway did not confirm the charge; the payment is being checked, do not retry it",
                    payment_id=str(payment_id),
                ),
            }
        except GatewayError as exc:
            store.mark_failed(payment_id, ccode=exc.ccode, message=exc.gateway_message)
            return {
                "status": 502,
                "body": _problem(
                    502,
                    "Bad Gateway",
                    "the payment gateway refused the charge",
                    payment_id=str(payment_id),
                    ccode=exc.ccode,
                ),
            }
        completion = complete_payment(
            store.db,
            payment_id=payment_id,
            transaction_id=charge.transaction_id,
            amount=charge.amount or pack.price,
            approval_code=charge.approval_code,
            invoice_number=charge.invoice_number,
        )
        if completion.outcome not in (Outcome.COMPLETED, Outcome.ALREADY_COMPLETED):
            logger.error(
                "saved card charge not completed",
                extra={"payment_id": str(payment_id), "outcome": str(completion.outcome)},
            )
            return {
                "status": 502,
                "body": _problem(
                    502,
                    "Bad Gateway",
                    "the charge could not be completed; the payment is being checked",
                    payment_id=str(payment_id),
                ),
            }
        return {"status": 201, "body": _view(payment_id, pack, None, PaymentStatus.COMPLETED)}


def get_payment(store: PaymentsStore, *, user_id: UUID, payment_id: UUID) -> dict[str, Any]:
    """The payment's state for its owner; NotFound for anyone else (no hint that it exists)."""
    payment = store.get_for_owner(payment_id, user_id)
    if payment is None:
        raise NotFound("no such payment")
    return {
        "payment_id": str(payment.id),
        "status": str(payment.status),
        "amount": f"{payment.amount.amount:.2f}",
        "currency": str(payment.amount.currency),
        "credits": payment.credits,
        "payment_url": payment.payment_url if payment.status == PaymentStatus.PENDING else None,
    }
