"""What the suite treats as a leaked secret or card number in a log record or other output."""

from __future__ import annotations

import re

import pytest

# Never in a log line, whatever the test: credentials, card numbers, CVVs, tokens, admin tokens.
FORBIDDEN = (
    "7110eda4d09e062aa5e4a390b0a572ac0d2c0220",  # the test terminal's KEY
    "PassP=yaad",
    '"PassP": "yaad"',
    "5326105300985614",  # the approving test card
    "4000000000000002",  # the declining test card
    "7319",  # the CVV the tests use
    "test-admin-token-0123456789",
    "s3cret-admin-token-xyz",
    "local-admin-token",
)

# A card number (16 digits) or a Hyp card token (19 digits, starting with 4) standing on its own.
# A run of digits inside a longer word, such as a hex digest, is not one: an idempotency key's
# md5 can hold sixteen digits in a row by chance.
_CARD_OR_TOKEN = re.compile(r"(?<![\w.])(\d{16}|4\d{18})(?![\w.])")


def find_leaks(text: str) -> list[str]:
    """Every forbidden value or free-standing card number/token found in `text`."""
    return [s for s in FORBIDDEN if s in text] + _CARD_OR_TOKEN.findall(text)


def fail_on_leaks(leaked: list[str], where: str) -> None:
    """Fails the test naming only the first four characters of what leaked: the report is output too."""
    if leaked:
        pytest.fail(f"a secret or card number reached {where}: {leaked[0][:4]}... ({len(leaked)} found)", pytrace=False)
