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

import uuid
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters.db import QueryError
from payments.adapters.hypay import Charge, Customer, HypayClient, PaymentPage, Token
from payments.adapters.payments_store import ChargeMark, OpenedPayment, Pack, PaymentsStore, Profile, SavedCard
from payments.domain import hypay as protocol
from payments.domain.payment import CreatePaymentRequest, PaymentStatus
from payments.errors import (
    AnotherChargeUnsettled,
    Conflict,
    DatabaseUnavailable,
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayError,
    GatewayNotAsked,
    GatewayRejected,
    IdempotencyKeyReused,
    NotFound,
    OutcomeUnconfirmed,
    PackUnavailable,
    PaymentError,
    RateLimited,
)
from payments.idempotency import PostgresPersistenceLayer
from payments.observability import logger, metrics
from payments.problems import problem_body
from payments.records import Record
from payments.services.answers import store_answer, time_for_the_fallback
from payments.services.keyed import Answer, Keyed

if TYPE_CHECKING:
    from payments.adapters.journal import HypTransaction


class CreatePaymentDeps(Record):
    store: PaymentsStore
    gateway: HypayClient
    rate_limit: int = 10  # creations per user per window
    rate_window_seconds: int = 60
    page_language: str = "HEB"
    send_invoice: bool = False


_MAX_BALANCE = 2_147_483_647  # profiles.credits is an integer
_FOREIGN_KEY_VIOLATION = "23503"


def _refuse_if_unholdable(profile: Profile, credits: int, request: CreatePaymentRequest) -> None:
    """PackUnavailable when the user's balance cannot hold the `credits` sold: the grant could never be written
    (profiles.credits is an integer). Never sold, rather than paid for and then refused at every delivery of the
    callback."""
    if profile.credits + credits > _MAX_BALANCE:
        raise PackUnavailable(
            f"credit pack {request.credit_pack_id} is not sold to this user: a balance of {profile.credits} credits "
            f"and the pack's {credits} would pass the largest balance ({_MAX_BALANCE})"
        )


def _scoped_key(user_id: UUID, key: str) -> str:
    """The value kept in payments.idempotency_key: unique across users (the column's constraint is global). The key
    is kept as sent: every payment ever made is found by it, whatever its form (an Idempotency-Key is the client's
    opaque value and carries no card data; docs/integration.md)."""
    return f"api:{user_id}:{key}"


# What of the buyer goes to Hyp. Hyp echoes the name back in its callbacks (Fild1, signed; a Hebrew letter is six
# characters percent-encoded), so each part is cut short: a profile's name of any length never makes a callback too
# large to be taken. An address longer than any valid one is not sent.
_NAME_PART_MAX = 50
_EMAIL_MAX = 254
# The pack's name (the web app's catalogue) is the page's description (Info, the invoice line): Hyp's page URL carries
# it, so a name of any length must never make that URL too long to open (a Hebrew letter is six characters encoded).
_DESCRIPTION_MAX = 100


def _description(pack: Pack) -> str:
    return pack.name[:_DESCRIPTION_MAX]  # a value as the catalogue holds it (never steering: tests/integration)


def _customer(profile: Profile) -> Customer:
    first, _, last = (profile.full_name or "").strip().partition(" ")
    email = profile.email or ""
    return Customer(
        first_name=first[:_NAME_PART_MAX],  # no space in it: the name's first word
        last_name=last.strip()[:_NAME_PART_MAX].strip(),
        email=email if len(email) <= _EMAIL_MAX else "",
    )


def _view(payment_id: UUID, pack: Pack, url: str | None, status: PaymentStatus) -> dict[str, Any]:
    return {
        "payment_id": str(payment_id),
        "payment_url": url,
        "amount": f"{pack.price.amount:.2f}",
        "currency": str(pack.price.currency),
        "credits": pack.credits,
        "status": str(status),
    }


def _another_charge_unsettled() -> dict[str, Any]:
    """The answer (stored for the key, as a decline is) to a saved-card charge asked while another charge of the user
    has no stored outcome: final for the key (no Retry-After: a human may have to settle the other)."""
    return {
        "status": 409,
        "body": _problem(
            409,
            "Conflict",
            "another saved-card charge of this user has no confirmed outcome yet; nothing was charged. Pay on the"
            " payment page, or with the saved card and a new Idempotency-Key once that charge is settled",
        ),
    }


_problem = problem_body


class CreatePayment:
    """`CreatePayment(deps, persistence)(user_id=..., idempotency_key=..., request=..., context=...)`."""

    def __init__(
        self, deps: CreatePaymentDeps, persistence: PostgresPersistenceLayer, *, expires_after_seconds: int = 86400
    ) -> None:
        self.deps = deps
        self._keyed = Keyed(
            self._create,
            persistence=persistence,
            key="[user_id, key]",
            validate="request",
            prefix="create_payment",
            expires_after_seconds=expires_after_seconds,
        )

    def __call__(
        self, *, user_id: UUID, idempotency_key: str, request: CreatePaymentRequest, context: Any = None
    ) -> Answer:
        scope = {"user_id": str(user_id), "key": idempotency_key, "request": request.fingerprint()}
        # The CVV travels beside the scope, never inside it: not hashed, not stored.
        return self._keyed(context, scope=scope, cvv=request.cvv)

    # -- the work, run at most once per (user, key) ----------------------------------------------

    def _create(self, scope: dict[str, Any], cvv: str | None) -> dict[str, Any]:
        user_id = UUID(scope["user_id"])
        request = CreatePaymentRequest.model_validate(scope["request"])
        store = self.deps.store

        try:
            pack, profile, card = self._admitted(request, user_id, scope["key"])
        except AnotherChargeUnsettled:
            # Stored as the key's answer (every copy of the request gets the same one), nothing else written.
            return self._left_by_key(user_id, scope["key"], request) or _another_charge_unsettled()
        except (NotFound, PackUnavailable, Conflict, RateLimited):
            # A retry of a key whose earlier attempt got somewhere (a page made, a charge attempted, finished) is
            # answered by what it left, whatever today's catalogue, card or rate says: "no longer sold" about a
            # card Hyp may have charged would leave that payment pending and out of the review queue.
            earlier = self._left_by_key(user_id, scope["key"], request)
            if earlier is not None:
                return earlier
            raise

        try:
            opened = store.open_pending(
                user_id=user_id,
                pack=pack,
                idempotency_key=_scoped_key(user_id, scope["key"]),
                save_card=request.save_card,
            )
        except QueryError as exc:
            if exc.sqlstate != _FOREIGN_KEY_VIOLATION:
                raise
            # The web app deleted the user (or the pack) since they were read: gone for good, as the check before
            # would have found (never "not yet", an outage alarmed as a bug). Nothing but the rate's count was written.
            raise NotFound("the signed-in user has no profile, or the credit pack no longer exists") from None
        if opened is None or not _made_by(opened, request):
            raise IdempotencyKeyReused("this Idempotency-Key already belongs to another payment; use a new key")
        payment_id = opened.id
        pack = pack._replace(price=opened.amount, credits=opened.credits or pack.credits)
        if not opened.created:
            _refuse_if_never_offered(opened)
            earlier = self._earlier_attempt(opened, pack)
            if earlier is not None:
                return earlier
            # An earlier attempt's payment that got nowhere, made on then's catalogue: its credits, checked as the
            # pack's were
            _refuse_if_unholdable(profile, pack.credits, request)

        if card is not None:
            return self._charge_saved_card(
                payment_id, pack, profile, Token(card.token, card.expiry_month, card.expiry_year), cvv
            )
        page = PaymentPage(
            pack.price,
            str(payment_id),
            _description(pack),
            _customer(profile),
            self.deps.page_language,
            invoice=self.deps.send_invoice,
        )
        url = self.deps.gateway.payment_page_url(page)  # a failure raises: nothing stored, a retry runs again
        store.set_payment_url(payment_id, url)
        logger.info("payment created", extra={"payment_id": str(payment_id), "credit_pack_id": str(pack.id)})
        return {"status": 201, "body": _view(payment_id, pack, url, PaymentStatus.PENDING)}

    def _admitted(
        self, request: CreatePaymentRequest, user_id: UUID, key: str
    ) -> tuple[Pack, Profile, SavedCard | None]:
        """The pack, the profile and the saved card (when asked for) of a purchase that may go on, or the refusal.
        The read-only checks first: a request refused by them (unknown or retired pack, no profile, no saved card)
        writes nothing, and does not count against the user's rate."""
        store = self.deps.store
        pack, profile = store.pack_and_profile(request.credit_pack_id, user_id)
        if pack is None:
            raise NotFound(f"credit pack {request.credit_pack_id} does not exist")
        if not pack.active:
            raise PackUnavailable(f"credit pack {request.credit_pack_id} is no longer sold")
        if pack.credits <= 0 or pack.price.minor <= 0:
            # The web app's catalogue row is not a sale: charged for nothing, or nothing to charge. Not sold, and
            # nothing written (never a pending payment of 0.00, never a charge that grants no credits).
            raise PackUnavailable(f"credit pack {request.credit_pack_id} is not sold (no credits, or no price)")
        if profile is None:
            raise NotFound("the signed-in user has no profile")
        if profile.credits + pack.credits > _MAX_BALANCE:
            # What is sold is the key's earlier payment's credits when there is one (a retry reuses it, made on then's
            # catalogue): read only here, when today's would not fit
            earlier = store.by_key(user_id, _scoped_key(user_id, key))
            _refuse_if_unholdable(profile, earlier.credits if earlier and earlier.credits else pack.credits, request)
        card = store.saved_card(user_id) if request.saved_card else None
        if request.saved_card and card is None:
            raise Conflict("there is no saved card for this user; pay on the payment page instead")
        if card is not None and protocol.hyp_token(card.token) is None:
            # saved_cards is the web app's table too: what it holds is sent to Hyp only when it is a Hyp token
            raise Conflict("the saved card cannot be charged (its token is not Hyp's); pay on the payment page instead")
        if card is not None and store.charge_unsettled(user_id, _scoped_key(user_id, key)):
            # Before anything is written, and not counted against the rate (the mark decides for good).
            raise AnotherChargeUnsettled("another saved-card charge of this user has no confirmed outcome yet")
        count, retry_after = store.hit_rate_limit(
            f"create_payment:{user_id}", self.deps.rate_window_seconds, request=key, limit=self.deps.rate_limit
        )
        if count > self.deps.rate_limit:
            raise RateLimited(
                f"at most {self.deps.rate_limit} payments per {self.deps.rate_window_seconds} s; retry later",
                retry_after,
            )
        return pack, profile, card

    def _left_by_key(self, user_id: UUID, key: str, request: CreatePaymentRequest) -> dict[str, Any] | None:
        """What an earlier attempt with this key left (`_earlier_attempt`), None when there is none or it got
        nowhere. Priced and counted as the payment asked (its pack may be gone from the catalogue). A payment this
        request would not have made (another pack, a page where a saved card is asked for, or the reverse) is the
        key reused (422), as on the way that creates payments."""
        opened = self.deps.store.by_key(user_id, _scoped_key(user_id, key))
        if opened is None or opened.credit_pack_id is None:
            return None
        if not _made_by(opened, request):
            raise IdempotencyKeyReused("this Idempotency-Key already belongs to another payment; use a new key")
        _refuse_if_never_offered(opened)
        pack = Pack(opened.credit_pack_id, "", opened.credits or 0, opened.amount, active=False)
        return self._earlier_attempt(opened, pack)

    def _earlier_attempt(self, opened: OpenedPayment, pack: Pack) -> dict[str, Any] | None:
        """What an earlier attempt with this key left, answered as such; None when it got nowhere
        (pending, no page, no charge attempted), so this attempt does the work."""
        if opened.charge_attempt_id is not None:
            return self._charge_outcome(opened, pack)
        if opened.status == PaymentStatus.PENDING and opened.payment_url is None:
            return None
        # The page was created (its answer lost to a store failure), or the payment finished since.
        url = opened.payment_url if opened.status == PaymentStatus.PENDING else None
        return {"status": 201, "body": _view(opened.id, pack, url, opened.status)}

    def _charge_outcome(self, opened: OpenedPayment, pack: Pack) -> dict[str, Any]:
        """A charge was attempted for this payment: its stored outcome, never a second charge."""
        match opened.status:
            case PaymentStatus.COMPLETED:
                return {"status": 201, "body": _view(opened.id, pack, None, PaymentStatus.COMPLETED)}
            case PaymentStatus.FAILED if opened.ccode is None:
                # Failed by an operator after its outcome was unknown (Hyp's transactions showed no charge): nothing
                # was declined; a new key may buy.
                raise Conflict(
                    "the payment was closed without a charge after its outcome was checked; retry with a new"
                    " Idempotency-Key"
                )
            case PaymentStatus.FAILED:
                return _declined_answer(opened.id, opened.ccode, opened.message or "declined")
            case PaymentStatus.PENDING:
                # The attempt that marked it is over (Powertools let this one in only after its in-progress
                # expiry: killed, timed out, or its outcome was never stored): nobody knows if Hyp charged.
                self._outcome_unknown(opened.id, "saved-card charge interrupted before its outcome was stored")
                return _confirming(opened.id, PaymentStatus.NEEDS_REVIEW)
            case _:
                return _confirming(opened.id, opened.status)

    def _outcome_unknown(self, payment_id: UUID, reason: str, hypay_id: str | None = None) -> None:
        """Hyp may or may not have charged: the payment goes to review, counted (the alarm fires at one). An Id the
        answer carried is named on the payment's row (a resolve can complete the payment with it)."""
        metrics.add_metric(name="ChargeOutcomeUnknown", unit=MetricUnit.Count, value=1)
        logger.error(
            "saved card charge outcome unknown",
            extra={"payment_id": str(payment_id), "reason": reason, "hypay_transaction_id": hypay_id},
        )
        self.deps.store.flag_for_review(payment_id, f"{reason}; check {_where(payment_id, hypay_id)}")

    def _charge_saved_card(
        self, payment_id: UUID, pack: Pack, profile: Profile, token: Token, cvv: str | None
    ) -> dict[str, Any]:
        """action=soft, at most once per payment: the attempt is marked before Hyp is asked, and after Hyp
        answers nothing may raise without the answer stored (`OutcomeUnconfirmed` keeps the key locked)."""
        store = self.deps.store
        attempt = uuid.uuid4()
        mark = store.mark_charge_attempt(payment_id, attempt)
        if mark is ChargeMark.ANOTHER_UNSETTLED:
            # Another charge was marked between the check before anything was written and this mark: this payment
            # stays pending with nothing asked of Hyp (the cleanup expires it), the refusal stored as the key's answer.
            logger.warning(
                "saved card charge refused: another of the user's charges is unsettled",
                extra={"payment_id": str(payment_id)},
            )
            return _another_charge_unsettled()
        if mark is not ChargeMark.MARKED:
            state = store.charge_state(payment_id)
            if state is None:
                raise NotFound("the payment disappeared")
            _refuse_if_never_offered(state)
            return self._charge_outcome(state, pack)
        try:
            charge = self.deps.gateway.charge_token(
                token,
                amount=pack.price,
                order=str(payment_id),
                description=_description(pack),
                customer=_customer(profile),
                cvv=cvv,
                invoice=self.deps.send_invoice,
            )
        except (GatewayAuthenticationError, GatewayNotAsked):
            # Hyp was not asked, or refused our terminal's credentials: nothing charged. Ours, so "not yet":
            # the attempt is released and the error raised (503, the retry may charge). Not released (the database
            # refusing now), the mark stays: the cleanup sends the payment to review, and the error still goes on
            # (its alarm).
            try:
                store.release_charge_attempt(payment_id, attempt)
            except PaymentError as exc:
                logger.error(
                    "saved card charge attempt not released", extra={"payment_id": str(payment_id), "code": exc.code}
                )
            raise
        except GatewayError as exc:
            answered = partial(self._not_approved, payment_id, pack, exc)
            return self._after_answer(payment_id, answered, exc.transaction_id)
        except Exception as exc:
            # A bug while Hyp was being asked: the charge may exist. Never deleted, never retried: the payment
            # goes to review (counted, alarmed) as any other unknown outcome, and the key stays locked if even
            # that cannot be stored.
            unknown = partial(self._unknown, payment_id, f"unexpected {type(exc).__name__} while Hyp was asked")
            self._after_answer(payment_id, unknown)
            raise OutcomeUnconfirmed(_CONFIRMING, payment_id=str(payment_id)) from exc
        charged = _charged(payment_id, charge)
        return self._after_answer(payment_id, partial(self._approved, payment_id, pack, charged), charged=charged)

    def _not_approved(self, payment_id: UUID, pack: Pack, exc: GatewayError) -> dict[str, Any]:
        if isinstance(exc, GatewayDeclined):
            return self._declined(payment_id, pack, exc)
        if isinstance(exc, GatewayRejected) and exc.ccode != DUPLICATE_TRANSACTION:
            return self._refused(payment_id, exc)
        # Unreachable, timed out, an error page, an answer without a CCode, or "duplicate" (Hyp saw this charge
        # before): it may exist.
        return self._unknown(payment_id, f"{exc.code}, CCode {exc.ccode}", exc.transaction_id)

    def _after_answer(
        self,
        payment_id: UUID,
        store_it: Callable[[], dict[str, Any]],
        hypay_id: str | None = None,
        charged: HypTransaction | None = None,
    ) -> dict[str, Any]:
        """`store_it` (the answer stored), or the fallback. `charged`: the transaction Hyp approved, when it did (its
        Id is `hypay_id`)."""
        hypay_id = charged.hypay_id if charged is not None else hypay_id
        try:
            return store_answer(store_it)
        except Exception as exc:
            # The answer could not be stored (the database down even after a reconnect, refusing the statement
            # for good: a constraint, a trigger, the balance out of range; or not passing it again and again: a lock
            # wait, a timeout). Hyp's transaction must not live only in this log line: the payment goes to review
            # naming it, in a statement of its own. If even that fails, the charge attempt mark stays (the cleanup
            # or the next retry sends it to review).
            metrics.add_metric(name="ChargeOutcomeUnknown", unit=MetricUnit.Count, value=1)
            logger.error(
                "saved card charge answered but not stored",
                extra={"payment_id": str(payment_id), "hypay_transaction_id": hypay_id, "error": type(exc).__name__},
            )
            error = exc.code if isinstance(exc, PaymentError) else type(exc).__name__
            # Not while the database is unreachable (a connection attempt would only spend the time left), nor without
            # time for another statement: the attempt mark already keeps the payment for review.
            down = isinstance(exc, DatabaseUnavailable) or not time_for_the_fallback()
            flagged = not down and self._review_naming(
                payment_id, hypay_id, f"answered, but its answer could not be stored ({error})", charged
            )
            status = PaymentStatus.NEEDS_REVIEW if flagged else PaymentStatus.PENDING
            raise OutcomeUnconfirmed(_CONFIRMING, payment_id=str(payment_id), status=str(status)) from exc

    def _review_naming(
        self, payment_id: UUID, hypay_id: str | None, what: str, charged: HypTransaction | None = None
    ) -> bool:
        """Best effort: the pending payment to review, its reason naming Hyp's transaction (its Id, else its Order),
        and the transaction Hyp approved (`charged`) journaled with it. Whether it went."""
        reason = f"saved-card charge {what}; check {_where(payment_id, hypay_id)}"
        if charged is not None:
            try:
                return self.deps.store.flag_for_review(payment_id, reason, journaled=charged)
            except PaymentError as exc:
                # The journal's row may be what the database refuses (the statement that failed wrote one too): the
                # payment alone, when there is time for it.
                logger.error(
                    "saved card charge not journaled for review",
                    extra={"payment_id": str(payment_id), "hypay_transaction_id": hypay_id, "code": exc.code},
                )
                if isinstance(exc, DatabaseUnavailable) or not time_for_the_fallback():
                    return False
        try:
            return self.deps.store.flag_for_review(payment_id, reason)
        except PaymentError as exc:
            logger.error(
                "saved card charge not sent to review", extra={"payment_id": str(payment_id), "code": exc.code}
            )
            return False

    def _approved(self, payment_id: UUID, pack: Pack, charge: HypTransaction) -> dict[str, Any]:
        from payments.services.settle import Result, settle  # saved-card charges only: off the cold start

        settlement = settle(self.deps.store.db, charge)
        if settlement.result == Result.COMPLETED:
            return {"status": 201, "body": _view(payment_id, pack, None, PaymentStatus.COMPLETED)}
        if settlement.result == Result.REVIEW:
            return _confirming(payment_id, PaymentStatus.NEEDS_REVIEW)
        return self._id_of_another(payment_id, charge.hypay_id)

    def _id_of_another(self, payment_id: UUID, hypay_id: str) -> dict[str, Any]:
        """Hyp's answer to our charge named a transaction the journal holds for another payment: settling left this
        payment as it was, and Hyp may have charged for it. A human looks (the payment in review, naming the Id)."""
        return self._unknown(payment_id, f"Hyp's answer named transaction {hypay_id}, which belongs to another payment")

    def _declined(self, payment_id: UUID, pack: Pack, exc: GatewayDeclined) -> dict[str, Any]:
        if exc.transaction_id:
            from payments.adapters.journal import HypTransaction, Source  # saved-card charges only
            from payments.services.settle import Result, settle

            settlement = settle(
                self.deps.store.db,
                HypTransaction(
                    hypay_id=exc.transaction_id,
                    order_ref=str(payment_id),
                    payment_id=payment_id,
                    ccode=exc.ccode if exc.ccode is not None else 0,
                    amount=pack.price,
                    source=Source.TOKEN_CHARGE,
                    verified=True,
                    message=exc.gateway_message,
                ),
            )
            if settlement.result == Result.DUPLICATE:
                return self._id_of_another(payment_id, exc.transaction_id)
        else:
            self.deps.store.mark_failed(payment_id, ccode=exc.ccode, message=exc.gateway_message)
        logger.info("payment failed", extra={"payment_id": str(payment_id), "ccode": exc.ccode})
        return _declined_answer(payment_id, exc.ccode, exc.gateway_message or "declined")

    def _refused(self, payment_id: UUID, exc: GatewayError) -> dict[str, Any]:
        self.deps.store.mark_failed(payment_id, ccode=exc.ccode, message=exc.gateway_message)
        logger.info("payment failed", extra={"payment_id": str(payment_id), "ccode": exc.ccode})
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

    def _unknown(self, payment_id: UUID, reason: str, hypay_id: str | None = None) -> dict[str, Any]:
        self._outcome_unknown(payment_id, f"saved-card charge outcome unknown ({reason})", hypay_id)
        return _confirming(payment_id, PaymentStatus.NEEDS_REVIEW)


def _charged(payment_id: UUID, charge: Charge) -> HypTransaction:
    """The transaction Hyp's approval of our charge names, as the journal records it."""
    from payments.adapters.journal import HypTransaction, Source  # saved-card charges only: off the cold start

    return HypTransaction(
        hypay_id=charge.transaction_id,
        order_ref=str(payment_id),
        payment_id=payment_id,
        ccode=0,
        amount=charge.amount,  # None (unreadable) or another currency: review, never taken for the price
        source=Source.TOKEN_CHARGE,
        verified=True,
        approval_code=charge.approval_code or None,
        invoice_number=charge.invoice_number,
        currency_known=charge.currency_known,
    )


def _where(payment_id: UUID, hypay_id: str | None) -> str:
    """Where a human finds a saved-card charge at Hyp: its Id when Hyp's answer gave one, else its Order."""
    return f"Hyp transaction {hypay_id}" if hypay_id else f"Hyp's transactions for Order {payment_id}"


def _made_by(payment: OpenedPayment, request: CreatePaymentRequest) -> bool:
    """Whether `request` is the one that made (or, new, makes) `payment`: its pack, its save_card, and a page where no
    saved card is asked for (a saved card's payment has no page; a page's has no charge attempt)."""
    return (
        payment.credit_pack_id == request.credit_pack_id
        and payment.save_card == request.save_card
        and (payment.payment_url is None if request.saved_card else payment.charge_attempt_id is None)
    )


def _refuse_if_never_offered(payment: OpenedPayment) -> None:
    """A purchase whose payment ended before anything was offered or charged (the cleanup expired a reused pending
    payment between two attempts with the key, or just before this one made its page or marked its charge): no page
    was made and no card charged, so not "being confirmed" (202) nor the ended payment without a page to pay on
    (201) - 409, a new key may buy."""
    if (
        payment.charge_attempt_id is None
        and payment.payment_url is None
        and payment.status in (PaymentStatus.EXPIRED, PaymentStatus.FAILED)
    ):
        raise Conflict(
            f"the payment is {payment.status} before a payment page was made or a card charged; retry with a new"
            " Idempotency-Key"
        )


DUPLICATE_TRANSACTION = 425
_CONFIRMING = "the charge's outcome is being confirmed; do not retry with a new key: poll GET /payments/{id}"


def _confirming(payment_id: UUID, status: PaymentStatus) -> dict[str, Any]:
    """202: the charge may have happened; it is being confirmed (never charged again)."""
    return {
        "status": 202,
        "body": {"payment_id": str(payment_id), "status": str(status), "detail": _CONFIRMING},
    }


def _declined_answer(payment_id: UUID, ccode: int | None, message: str) -> dict[str, Any]:
    return {
        "status": 402,
        "body": _problem(
            402,
            "Payment Declined",
            f"the card was declined: {message}",
            payment_id=str(payment_id),
            ccode=ccode,
            gateway_message=message,
        ),
    }


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
