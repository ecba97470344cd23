"""Payments: statuses and the shapes the API speaks."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cache
from typing import Any
from uuid import UUID

from pydantic_core import PydanticUndefined, SchemaValidator
from pydantic_core import core_schema as cs

from payments.domain.ids import canonical_uuid
from payments.records import Record

# The journal detail (and review queue reason) of a payment paid whose credits are not known: the web app wrote it
# without them and its pack no longer sells credits at its price (adapters.journal.SOLD_CREDITS).
CREDITS_NOT_KNOWN = "paid, but the credits it sold are not known"


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


def _cvv_digits(value: str | None) -> str | None:
    if value is not None and not _CVV.fullmatch(value):
        raise ValueError("cvv must be 3 or 4 digits")  # never echo the value
    return value


def _canonical_pack_id(value: object) -> object:
    """A string `credit_pack_id` is a UUID only as the document writes one (8-4-4-4-12): pydantic-core's UUID also
    takes 32 bare digits, braces or `urn:uuid:`. Anything else goes on to its own check (a type error, as before)."""
    if isinstance(value, str) and canonical_uuid(value) is None:
        raise ValueError("credit_pack_id must be a UUID written 8-4-4-4-12")
    return value


def _one_card(fields: dict[str, Any]) -> dict[str, Any]:
    if fields["cvv"] is not None and not fields["saved_card"]:
        raise ValueError("cvv is only accepted with saved_card")
    if fields["saved_card"] and fields["save_card"]:
        raise ValueError("save_card applies to a new card, not to saved_card")
    return fields


def _field(schema: cs.CoreSchema, *, default: object = PydanticUndefined) -> cs.TypedDictField:
    if default is PydanticUndefined:
        return cs.typed_dict_field(schema, required=True)
    return cs.typed_dict_field(cs.with_default_schema(schema, default=default), required=False)


@cache
def _request_validator() -> SchemaValidator:
    """The body's rules (pydantic-core: the errors pydantic gives, without its model machinery at a cold start).
    The OpenAPI document says the same (`payments.api_models.CreatePaymentRequest`; test_openapi holds them)."""
    return SchemaValidator(
        cs.no_info_after_validator_function(
            _one_card,
            cs.typed_dict_schema(
                {
                    "credit_pack_id": _field(
                        cs.no_info_before_validator_function(_canonical_pack_id, cs.uuid_schema())
                    ),
                    # strict: only JSON true/false; "yes", 1 or "true" are a 400, not a guess at what was meant.
                    "save_card": _field(cs.bool_schema(strict=True), default=False),
                    "saved_card": _field(cs.bool_schema(strict=True), default=False),
                    "cvv": _field(
                        cs.nullable_schema(cs.no_info_after_validator_function(_cvv_digits, cs.str_schema())),
                        default=None,
                    ),
                },
                extra_behavior="forbid",
            ),
        )
    )


class CreatePaymentRequest(Record):
    """`POST /payments` body. Price, currency and credits come from the pack, never from here."""

    _hidden = frozenset({"cvv"})
    credit_pack_id: UUID
    save_card: bool = False  # keep a Hyp token of the card after this payment succeeds
    saved_card: bool = False  # charge the card saved earlier instead of opening a page
    cvv: str | None = None  # with saved_card; passed through to Hyp, never stored, logged or in the repr

    @classmethod
    def model_validate(cls, body: object) -> CreatePaymentRequest:
        """The request, or pydantic-core's `ValidationError` naming each field and what is wrong with it."""
        return cls(**_request_validator().validate_python(body))

    def fingerprint(self) -> dict[str, object]:
        """What identifies the request for idempotency: everything but the CVV."""
        return {"credit_pack_id": str(self.credit_pack_id), "save_card": self.save_card, "saved_card": self.saved_card}
