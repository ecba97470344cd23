"""What the suite treats as a leaked secret or card number in a log record, a trace or a table.

Values are matched standing on their own, never inside a longer word, number or hyphenated id: an md5 in
hex holds any four digits (the tests' CVV) and sometimes sixteen in a row (a card number) by chance, and
a random UUID's second group is the CVV once in 65,536 (`27edc178-7319-4e35-...`: a payment id).
"""

from __future__ import annotations

import re

import pytest

from payments.domain.cards import CARD_NUMBER_PATTERN

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

_BEFORE = r"(?<![0-9A-Za-z_.-])"
_AFTER = r"(?![0-9A-Za-z_.-])"
# A card number (16 digits) or a Hyp card token (19 digits, starting with 4).
_CARD_OR_TOKEN = re.compile(_BEFORE + r"(\d{16}|4\d{18})" + _AFTER)


def standing(value: str) -> re.Pattern[str]:
    """`value` not inside a longer word or number."""
    return re.compile(_BEFORE + re.escape(value) + _AFTER)


# The same as a PostgreSQL regular expression, for searching rows as text (POSIX: no lookaround).
def pg_standing(value: str) -> str:
    return "(^|[^0-9A-Za-z_.-])" + re.escape(value) + "([^0-9A-Za-z_.-]|$)"


def holds(text: str, value: str) -> bool:
    return standing(value).search(text) is not None


def find_leaks(text: str, *values: str) -> list[str]:
    """Every forbidden value (and each of `values`) or card number/token found in `text`."""
    return [s for s in (*FORBIDDEN, *values) if holds(text, s)] + _CARD_OR_TOKEN.findall(text)


def fail_on_leaks(leaked: list[str], where: str) -> None:
    """Fails the test naming only the first four characters of what leaked: the report is output too."""
    if leaked:
        pytest.fail(f"a secret or card number reached {where}: {leaked[0][:4]}... ({len(leaked)} found)", pytrace=False)


# In a report, more than a log check would take for one: a card number in its groups with any separators, and any run of
# 13 digits or more, glued to a word or to other digits (masking a timestamp there costs nothing).
_REPORTED_CARD = re.compile(f"{CARD_NUMBER_PATTERN}|[0-9\uff10-\uff19]{{13,}}")


def masked(text: str) -> str:
    """`text` with every forbidden value and card number or token replaced: what the suite's own reports show."""
    for value in FORBIDDEN:
        text = standing(value).sub("[secret]", text)
    return _REPORTED_CARD.sub("[card]", text)  # a card number or token standing alone is a run of 13 digits too
