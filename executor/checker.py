"""Output checker: the code_contests harness's comparison, reproduced exactly.

Both outputs are split on (ASCII) whitespace and lower-cased (ASCII, as absl does); equal token lists pass.
Otherwise the token counts must match and every pair must be equal as strings or, when both parse as
numbers, differ by less than 1e-5 absolute. The harness's own cases: "abc DEF" == "abc def";
"abc 123" == "abc 123.000001"; "abc 123" != "abc 123.1"; "abc def" != "abc def 123".

Non-goals: special judges (problems with several correct answers fail unless the output matches).
"""

from __future__ import annotations

import math
import re

TOLERANCE = 1e-5
_WHITESPACE = re.compile(r"[ \t\n\v\f\r]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# A decimal float as a C++ strtod-style parser accepts it (no Python-only forms such as "1_000").
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?|inf(?:inity)?|nan)")


def tokens(text: str) -> list[str]:
    """Whitespace-separated, ASCII-lower-cased tokens of ``text``."""
    return [t for t in _WHITESPACE.split(text.translate(_ASCII_LOWER)) if t]


def _number(token: str) -> float | None:
    if not _NUMBER.fullmatch(token):
        return None
    try:
        return float(token)
    except ValueError:
        return None


def tokens_match(expected: str, actual: str) -> bool:
    if expected == actual:
        return True
    x, y = _number(expected), _number(actual)
    if x is None or y is None:
        return False
    # NaN or infinite values never compare within tolerance (inf - inf is nan).
    diff = abs(x - y)
    return not math.isnan(diff) and diff < TOLERANCE


def outputs_match(expected: str, actual: str) -> bool:
    """Does ``actual`` (the program's stdout) pass against ``expected`` under the harness's rules?"""
    want, got = tokens(expected), tokens(actual)
    if want == got:
        return True
    if len(want) != len(got):
        return False
    return all(tokens_match(w, g) for w, g in zip(want, got))
