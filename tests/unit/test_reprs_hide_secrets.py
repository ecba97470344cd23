"""The record types that hold a secret never show it in their repr (a log line or a traceback prints reprs)."""

from __future__ import annotations

import io
import json

import pytest

from payments.adapters.db import ConnectionParams
from payments.adapters.hypay import HypayCredentials, Token
from payments.adapters.payments_store import SavedCard
from payments.domain.payment import CreatePaymentRequest
from payments.observability import logger
from payments.services.handle_callback import Callback
from payments.settings import AdminSettings, AuthSettings, CleanupSettings, DatabaseSettings, HypaySettings

SECRET = "s3cr3t-value-4580458045804580"


@pytest.mark.parametrize(
    "record",
    [
        ConnectionParams("user", "db", password=SECRET),
        HypayCredentials(masof="0010000000", key=SECRET, passp=SECRET),
        Token(value=SECRET, expiry_month=12, expiry_year=2030),
        SavedCard(token=SECRET, expiry_month=12, expiry_year=2030, last4="4580"),
        HypaySettings(HYPAY_KEY=SECRET, HYPAY_PASSP=SECRET),
        DatabaseSettings(DATABASE_URL=f"postgresql://app:{SECRET}@db/payments"),
        AuthSettings(JWT_SECRET=SECRET),
        AdminSettings(ADMIN_API_TOKEN=SECRET),
        CleanupSettings(ADMIN_API_TOKEN=SECRET),
    ],
    ids=lambda record: type(record).__name__,
)
def test_a_secret_is_not_in_the_repr(record: object) -> None:
    shown = repr(record) + str(record)
    assert SECRET not in shown, shown


def test_a_cvv_is_not_in_the_request_repr() -> None:
    request = CreatePaymentRequest.model_validate(
        {"credit_pack_id": "aaaaaaaa-0000-4000-8000-000000000001", "saved_card": True, "cvv": "9173"}
    )
    assert "9173" not in repr(request) + str(request)


def test_the_records_are_frozen() -> None:
    with pytest.raises(AttributeError):
        HypaySettings().url = "https://elsewhere.example/"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del HypaySettings().secret_arn
    with pytest.raises(AttributeError):
        ConnectionParams("user", "db").host = "elsewhere"  # type: ignore[misc]
    assert HypaySettings(HYPAY_TIMEOUT="3") == HypaySettings(HYPAY_TIMEOUT=3.0) != HypaySettings()


ORDER = "aaaaaaaa-0000-4000-8000-000000000001"
RAW = f"Id=12345678&CCode=0&Amount=10&ACode=0012345&Order={ORDER}&Fild1=RAWSECRET&Sign=abc"


@pytest.mark.parametrize(
    ("record", "secret"),
    [
        (CreatePaymentRequest.model_validate({"credit_pack_id": ORDER, "saved_card": True, "cvv": "987"}), "987"),
        (Callback.parse(RAW), "RAWSECRET"),
        (ConnectionParams("user", "db", password=SECRET), SECRET),
        (HypayCredentials(masof="0010000000", key=SECRET, passp=SECRET), SECRET),
        (Token(value=SECRET, expiry_month=12, expiry_year=2030), SECRET),
        (SavedCard(token=SECRET, expiry_month=12, expiry_year=2030, last4="4580"), SECRET),
    ],
    ids=lambda value: type(value).__name__,
)
def test_a_record_logged_as_an_extra_or_a_message_never_writes_its_secret(record: object, secret: str) -> None:
    # A tuple would be written as the array of its values; these are written as their repr (default=str)
    assert secret not in json.dumps(record, default=str)
    handler = logger.registered_handler
    written, stream = io.StringIO(), handler.stream  # type: ignore[attr-defined]
    handler.stream = written  # type: ignore[attr-defined]
    try:
        logger.info("a record", extra={"record": record, "records": [record]})
        logger.info(record)
    finally:
        handler.stream = stream  # type: ignore[attr-defined]
    assert written.getvalue().count('"a record"') == 1 and secret not in written.getvalue()
