"""The models the OpenAPI document describes the API's bodies with (`make openapi`), and nothing else.

No function imports this module: the routes name these models (`payments.api_schema.json_answer("PaymentView",
...)`) and `ops/openapi.py` adds their schemas to the document, so that a cold start creates none of them. What a
route validates with is elsewhere (`payments.domain.payment.CreatePaymentRequest` validates the body described by
`CreatePaymentRequest` here); tests hold each description to the code that reads or writes the body.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from payments.domain.payment import PaymentStatus

# What `payments.domain.payment.CreatePaymentRequest` requires across fields, as JSON Schema.
_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"required": ["cvv"], "properties": {"cvv": {"type": "string"}}},
            "then": {"required": ["saved_card"], "properties": {"saved_card": {"const": True}}},
        },
        {
            "not": {
                "required": ["save_card", "saved_card"],
                "properties": {"save_card": {"const": True}, "saved_card": {"const": True}},
            }
        },
    ]
}


class CreatePaymentRequest(BaseModel):
    """`POST /payments` body. Price, currency and credits come from the pack, never from here."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_RULES, defer_build=True)

    credit_pack_id: UUID = Field(description="The credit pack to buy (an active one).")
    # strict: only JSON true/false; "yes", 1 or "true" are a 400, not a guess at what was meant.
    save_card: bool = Field(
        default=False, strict=True, description="Keep a Hyp token of the card after this payment succeeds."
    )
    saved_card: bool = Field(
        default=False, strict=True, description="Charge the card saved earlier instead of opening a page."
    )
    cvv: str | None = Field(
        default=None,
        description="With saved_card, when the issuer asks for it. Passed through to Hyp; never stored or logged.",
        json_schema_extra={"writeOnly": True, "pattern": "^[0-9]{3,4}$"},
        repr=False,
    )


class PaymentView(BaseModel):
    """A payment as its owner sees it."""

    model_config = ConfigDict(defer_build=True)

    payment_id: UUID
    status: PaymentStatus
    amount: str = Field(description="Decimal string in the currency's major unit, e.g. 49.90.")
    currency: str
    credits: int | None
    payment_url: str | None = None


class Problem(BaseModel):
    """application/problem+json (RFC 9457)."""

    model_config = ConfigDict(defer_build=True)

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class GatewayMessage(BaseModel):
    """API Gateway's own answer: its authorizer's 401 (403 with the Lambda authorizer), 404 for no route."""

    model_config = ConfigDict(defer_build=True)

    message: str


class PaymentConfirming(BaseModel):
    """202: a saved-card charge may have happened and is being confirmed; never charged again for this key."""

    model_config = ConfigDict(defer_build=True)

    payment_id: str
    status: PaymentStatus
    detail: str


class IdempotencyExercise(BaseModel):
    """What GET /debug/test-idempotency ran, and whether the store behaved."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    type: str
    function_ran: int
    ok: bool


class ReviewItem(BaseModel):
    """One thing that needs a human (docs/operations.md); the payment, the journal and the next step."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    id: str
    kind: str = Field(description="payment, refund or transaction")
    reason: str
    since: str
    age_seconds: float
    next_step: str


class ReviewPage(BaseModel):
    model_config = ConfigDict(defer_build=True)

    items: list[ReviewItem]
    next: str | None = Field(description="The cursor of the next page (`after`), or null at the end.")


class Resolved(BaseModel):
    model_config = ConfigDict(defer_build=True)

    payment_id: str
    action: str
    status: str
    hypay_id: str | None
    credits_granted: int
    audit_id: str
    resolved_by: str


class RefundConfirming(BaseModel):
    """202: a refund (or the charge behind it) may have moved money and is being confirmed."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    payment_id: str
    status: str
    detail: str


class RefundSettled(BaseModel):
    """A refund of unknown outcome settled by an operator (200): succeeded or refused, as found at Hyp."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    refund_id: str
    payment_id: str
    hypay_transaction_id: str
    method: str
    amount: str
    currency: str
    status: str
    hypay_refund_id: str | None
    credits_taken: int
    detail: str | None


class TransactionClosed(BaseModel):
    """A Hyp transaction closed by an operator (200): what Hyp's portal shows, by whom, when and why."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    hypay_id: str
    payment_id: str | None
    decision: str
    amount: str | None
    currency: str | None
    closed_as: str
    closed_by: str
    closed_at: str
    reason: str


class Refund(BaseModel):
    """A refund that succeeded (201)."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    refund_id: str
    payment_id: str
    method: str
    amount: str
    currency: str
    hypay_transaction_id: str
    status: str
