"""An exception no code foresaw may carry anything: its text is redacted in every log line the package writes,
through the main logger and the modules' child loggers alike."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from payments.observability import logger, redact_secrets


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("card 4580458045804580 declined", "4580458045804580"),
        ("card 4580 4580 4580 4580", "4580 4580 4580 4580"),
        ("Hyp token 4123456789012345678", "4123456789012345678"),
        ("DETAIL: Key (token)=(4580458045804580123) already exists", "4580458045804580123"),
        ("action=soft&KEY=7110eda4d0&PassP=yaad&cvv=125", "7110eda4d0"),
        ("action=soft&KEY=7110eda4d0&PassP=yaad&cvv=125", "yaad"),
        ("action=soft&KEY=7110eda4d0&PassP=yaad&cvv=125", "125"),
        ("body action%3Dsoft%26CC%3D4580458045804580%26Tmonth%3D12", "4580458045804580"),
        ("body action%3Dsoft%26PassP%3Dyaad%26Amount%3D10", "yaad"),
        ('{"password": "two words", "x": 1}', "two words"),
        ("{'KEY': 'k3y'}", "k3y"),
        ("could not connect: postgresql://payments:Sup3rS3cret@db.example:5432/postgres", "Sup3rS3cret"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOiJIUzI1NiJ9.e30.sig"),
    ],
)
def test_card_data_and_credentials_in_exception_text_are_redacted(text: str, secret: str) -> None:
    assert secret not in redact_secrets(text)


def test_ids_the_logs_need_are_kept() -> None:
    # A payment id (a UUID, even one all digits), a Hyp transaction id, an amount, a SQLSTATE: what an engineer needs
    text = "payment bd000000-0000-4000-8000-000000000001, Hyp Id 12788261, 49.90 ILS, SQLSTATE 23505, idempotency_key=k"
    assert redact_secrets(text) == text


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    handler = logger.registered_handler
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


@pytest.mark.parametrize("child", [False, True], ids=["the-package-logger", "a-modules-child-logger"])
def test_a_logged_exception_is_redacted_in_the_line_written(logged: io.StringIO, child: bool) -> None:
    from aws_lambda_powertools import Logger

    writer = Logger(child=True) if child else logger  # as payments.adapters.hypay, payments.idempotency ...
    try:
        try:
            raise ValueError({"C": "23505", "D": "Key (token)=(4580458045804580123) already exists"})
        except ValueError as cause:
            raise RuntimeError("KEY=abcdef card 4580458045804580") from cause
    except RuntimeError:
        writer.exception("boom", extra={"payment_id": "bd000000-0000-4000-8000-000000000001"})
    line = json.loads(logged.getvalue().splitlines()[-1])
    assert line["message"] == "boom" and line["exception_name"] == "RuntimeError"
    assert line["payment_id"] == "bd000000-0000-4000-8000-000000000001"
    assert "The above exception was the direct cause" in line["exception"]  # the whole chain, redacted
    for secret in ("4580458045804580", "abcdef"):
        assert secret not in logged.getvalue()
