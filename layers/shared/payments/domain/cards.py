"""What reads as a card number in a text from outside (an operator's reason, Hyp's own message), to refuse or mask."""

from __future__ import annotations

import re

# A card number: 13 to 19 digits (ASCII or full-width) in a row, or written in a card's groups with separators (up to
# 3 between two groups: spaces of any kind, dots, slashes, underscores, hyphens and dashes): 4-4-4 and then 1 to 4
# (and 1 to 3), "5326 1053 0098 5614", "5326-1053-0098-5614", "5326.1053.0098.5614", "5326 - 1053 - 0098 - 5614";
# American Express's and Diners' 4-6-5 and 4-6-4. The number is whole: no letter or digit just before or after it.
# Two Hyp Ids side by side ("13532200 13532201") are no card's groups. Python's and the OpenAPI tools' `re` read the
# same pattern (`\s` is Unicode white space in both, the no-break space included).
_DIGIT = "[0-9\uff10-\uff19]"
_NEAR = "[0-9A-Za-z\uff10-\uff19]"
_APART = "[\\s._/\\-\u2010-\u2015]{1,3}"
CARD_NUMBER_PATTERN = (
    f"(?<!{_NEAR})(?:{_DIGIT}{{13,19}}"
    f"|{_DIGIT}{{4}}(?:{_APART}{_DIGIT}{{4}}){{2}}{_APART}{_DIGIT}{{1,4}}(?:{_APART}{_DIGIT}{{1,3}})?"
    f"|{_DIGIT}{{4}}{_APART}{_DIGIT}{{6}}{_APART}{_DIGIT}{{4,5}})(?!{_NEAR})"
)
CARD_NUMBER = re.compile(CARD_NUMBER_PATTERN)
