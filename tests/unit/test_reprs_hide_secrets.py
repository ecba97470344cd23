"""The record types that hold a secret never show it in their repr (a log line or a traceback prints reprs)."""

from __future__ import annotations

import pytest

from payments.adapters.db import ConnectionParams
from payments.adapters.hypay import HypayCredentials, Token
from payments.adapters.payments_store import SavedCard
from payments.domain.payment import CreatePaymentRequest
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
