"""Payments: statuses and the shapes the API speaks."""

from __future__ import annotations

import re
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict


class PaymentStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    NEEDS_REVIEW = "needs_review"
    # Read only: a status the web app wrote before this backend ('paid', 'cancelled', ...), kept as
    # history (`make migrate --adopt-legacy`). Never written; money arriving for one goes to review.
    LEGACY = "legacy"

    @classmethod
    def from_db(cls, value: str | None) -> PaymentStatus:
        """The stored status; one outside today's list is LEGACY, never an error."""
        try:
            return cls(value or "")
        except ValueError:
            return cls.LEGACY


_CVV = re.compile(r"[0-9]{3,4}", re.ASCII)  # fullmatch: `$` would let "123\n" through

# What the model validators below require, said in the OpenAPI document too (JSON Schema).
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

    # Built by the function that reads it (create_payment, at its init), not by every function importing this module.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_RULES, defer_build=True)

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

    @field_validator("cvv")
    @classmethod
    def _cvv_digits(cls, value: str | None) -> str | None:
        if value is not None and not _CVV.fullmatch(value):
            raise ValueError("cvv must be 3 or 4 digits")  # never echo the value
        return value

    @model_validator(mode="after")
    def _cvv_only_with_saved_card(self) -> CreatePaymentRequest:
        if self.cvv is not None and not self.saved_card:
            raise ValueError("cvv is only accepted with saved_card")
        if self.saved_card and self.save_card:
            raise ValueError("save_card applies to a new card, not to saved_card")
        return self

    def fingerprint(self) -> dict[str, object]:
        """What identifies the request for idempotency: everything but the CVV."""
        return {"credit_pack_id": str(self.credit_pack_id), "save_card": self.save_card, "saved_card": self.saved_card}


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
