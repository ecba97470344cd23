"""Hyp's protocol on strings: the documented example, every signed field, answers, CCodes, money."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote

import pytest

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, redirect_sign
from payments.domain import hypay as protocol
from payments.domain.money import Currency, Money
from payments.errors import (
    GatewayAuthenticationError,
    GatewayDeclined,
    GatewayRejected,
    GatewayUnavailable,
    InvalidRequest,
)

# Hyp's documented redirect example, signed with the public test terminal's KEY.
EXAMPLE = (
    "Id=12788261&CCode=0&Amount=10&ACode=0012345&Order=12345678910&Fild1=Israel%20Isareli&Fild2=test%40yaad.net"
    "&Fild3=&Sign=13cccf141e2fc2e2dd8d8201a90d58929514d97e00084cb9436cab087f1ba8c6&Bank=6&Payments=1"
    "&UserId=203269535&Brand=2&Issuer=2&L4digit=0000&street=levanon%203&city=netanya&zip=42361&cell=098610338"
    "&Coin=1&Tmonth=03&Tyear=2023&errMsg=%20(0)&Hesh=31"
)
DOCUMENTED_SIGN = "13cccf141e2fc2e2dd8d8201a90d58929514d97e00084cb9436cab087f1ba8c6"


def replace(query: str, name: str, value: str) -> str:
    return "&".join(f"{k}={value if k == name else v}" for k, v in protocol.split_raw_query(query))


def test_documented_example_is_genuine() -> None:
    assert protocol.verify_redirect_signature(EXAMPLE, PUBLIC_TEST_TERMINAL_KEY)
    assert protocol.verify_redirect_signature("?" + EXAMPLE, PUBLIC_TEST_TERMINAL_KEY)


def test_simulator_signs_the_documented_example_as_documented() -> None:
    encoded = dict(protocol.split_raw_query(EXAMPLE))
    assert redirect_sign(encoded, PUBLIC_TEST_TERMINAL_KEY) == DOCUMENTED_SIGN


@pytest.mark.parametrize("field", protocol.SIGNED_FIELDS)
def test_altering_any_signed_field_is_rejected(field: str) -> None:
    original = dict(protocol.split_raw_query(EXAMPLE))[field]
    tampered = replace(EXAMPLE, field, original + "1")
    assert not protocol.verify_redirect_signature(tampered, PUBLIC_TEST_TERMINAL_KEY)


@pytest.mark.parametrize("field", ["Coin", "L4digit", "Hesh", "UserId", "Tmonth", "Bank", "errMsg", "city"])
def test_fields_outside_sign_are_not_covered(field: str) -> None:
    # What this shows: anyone holding the URL can change these without breaking Sign, so nothing
    # they say may be trusted without the authoritative VERIFY (and our own records).
    tampered = replace(EXAMPLE, field, "9")
    assert tampered != EXAMPLE
    assert protocol.verify_redirect_signature(tampered, PUBLIC_TEST_TERMINAL_KEY)


def test_decoding_and_reencoding_breaks_nothing_because_values_stay_raw() -> None:
    # A value re-encoded differently (space as + instead of %20) no longer matches: raw means raw.
    assert not protocol.verify_redirect_signature(replace(EXAMPLE, "Fild1", "Israel+Isareli"), PUBLIC_TEST_TERMINAL_KEY)


@pytest.mark.parametrize(
    "query",
    [
        EXAMPLE.replace(f"&Sign={DOCUMENTED_SIGN}", ""),  # no Sign
        EXAMPLE + f"&Sign={DOCUMENTED_SIGN}",  # two Signs
        EXAMPLE + "&Amount=10",  # a signed field twice
        EXAMPLE.replace("&Fild3=", ""),  # a signed field missing
        "",
    ],
)
def test_malformed_redirects_are_rejected(query: str) -> None:
    assert not protocol.verify_redirect_signature(query, PUBLIC_TEST_TERMINAL_KEY)


def test_wrong_key_is_rejected() -> None:
    assert not protocol.verify_redirect_signature(EXAMPLE, "0" * 40)


def test_values_decode_as_utf8_or_windows_1255() -> None:
    hebrew = "ישראל ישראלי"
    assert protocol.decode_value(quote(hebrew.encode("utf-8"))) == hebrew
    assert protocol.decode_value(quote(hebrew.encode("cp1255"))) == hebrew
    assert protocol.decode_query(EXAMPLE)["Fild2"] == "test@yaad.net"


def test_html_or_garbage_answers_are_gateway_unavailable() -> None:
    for body in (b"<html><body>Error</body></html>", b"  <!DOCTYPE html><p>x", b"", b"Service Unavailable"):
        with pytest.raises(GatewayUnavailable):
            protocol.parse_answer(body)
    assert protocol.parse_answer(b"CCode=0&Id=5\n").ccode == 0


@pytest.mark.parametrize(
    ("ccode", "error"),
    [
        (4, GatewayDeclined),
        (6, GatewayDeclined),
        (997, GatewayDeclined),
        (700, GatewayDeclined),
        (902, GatewayAuthenticationError),
        (901, GatewayAuthenticationError),
        (999, GatewayUnavailable),
        (400, GatewayAuthenticationError),  # validation: our request did not validate (ours, "not yet")
        (401, GatewayAuthenticationError),
        (402, GatewayAuthenticationError),
        (425, GatewayRejected),
        (920, GatewayRejected),
    ],
)
def test_ccodes_map_to_typed_errors(ccode: int, error: type) -> None:
    with pytest.raises(error) as caught:
        protocol.raise_for_ccode(protocol.parse_answer(f"CCode={ccode}".encode()), "charge")
    assert caught.value.ccode == ccode and caught.value.gateway_message


@pytest.mark.parametrize("ccode", [400, 401, 402])
def test_validation_codes_are_a_refusal_where_the_call_names_what_hyp_may_not_have(ccode: int) -> None:
    # getToken: Hyp answers them for data too (the token of a declined transaction), never to be asked again
    with pytest.raises(GatewayRejected) as caught:
        protocol.raise_for_ccode(protocol.parse_answer(f"CCode={ccode}".encode()), "getToken", invalid_is_ours=False)
    assert caught.value.ccode == ccode


def test_gateway_messages_never_carry_a_card_number() -> None:
    answer = protocol.parse_answer(b"CCode=4&errMsg=card%205326105300985614%20declined")
    with pytest.raises(GatewayDeclined) as caught:
        protocol.raise_for_ccode(answer, "charge")
    assert "5326105300985614" not in str(caught.value.gateway_message)


def test_money_is_exact() -> None:
    assert Money.of("49.90").hypay_amount() == "49.90"
    assert Money.of(Decimal("199")).hypay_amount() == "199.00"
    assert Money(4990).amount == Decimal("49.90")
    assert Money.of("10", Currency.USD).coin == "2"
    with pytest.raises(InvalidRequest):
        Money.of("49.999")
    with pytest.raises(TypeError):
        Money.of(49.9)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        Money(0).hypay_amount()


def test_a_non_ascii_raw_value_has_no_signature() -> None:
    # Given a signed field whose raw value carries characters a percent-encoded query never has, signed the way a
    # lossy encoder would (each such character as "?"): two different values with one byte form
    lossy = replace(EXAMPLE, "Fild1", "Israel?Isareli")
    hostile = replace(EXAMPLE, "Fild1", "Israel\u05d0Isareli")
    lossy_sign = protocol.redirect_signature(lossy, PUBLIC_TEST_TERMINAL_KEY)
    assert lossy_sign is not None
    forged = replace(hostile, "Sign", lossy_sign)
    # Then the non-ASCII value is refused outright: no payload, no signature, not genuine
    assert protocol.redirect_sign_payload(hostile) is None
    assert not protocol.verify_redirect_signature(forged, PUBLIC_TEST_TERMINAL_KEY)
    # And so is a Sign that is not ASCII
    assert not protocol.verify_redirect_signature(
        replace(EXAMPLE, "Sign", DOCUMENTED_SIGN[:-1] + "\u0661"), PUBLIC_TEST_TERMINAL_KEY
    )
