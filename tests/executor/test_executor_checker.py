"""The checker reproduces the code_contests harness comparison (its four published cases first)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlef.executor.checker import outputs_match, tokens


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        # The harness's own test cases.
        ("abc DEF", "abc def", True),
        ("abc 123", "abc 123.000001", True),
        ("abc 123", "abc 123.1", False),
        ("abc def", "abc def 123", False),
    ],
)
def test_published_cases(expected: str, actual: str, match: bool) -> None:
    assert outputs_match(expected, actual) is match


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        ("1 2 3\n", "1\n2\n3", True),  # any whitespace separates tokens
        ("  yes\r\n", "YES", True),
        ("", "", True),
        ("", "\n\n  \t", True),
        ("0", "", False),
        ("0.5", "0.50000999", True),  # |diff| < 1e-5
        ("0.5", "0.50002", False),
        ("1e3", "1000.000001", True),
        ("-0", "0", True),
        ("abc", "abd", False),
        ("1_000", "1000", False),  # Python-only float syntax is not a number to the harness
        ("nan", "nan", True),  # equal as strings
        ("nan", "NaN", True),  # lower-cased first
        ("inf", "1e309", False),  # inf - inf is not within tolerance
        ("x 1", "x 1 ", True),
        ("ÄB", "äb", False),  # ASCII lower-casing only, as absl does
        ("a\u00a0b", "a b", False),  # NBSP is not harness whitespace
    ],
)
def test_more_cases(expected: str, actual: str, match: bool) -> None:
    assert outputs_match(expected, actual) is match


def reference(expected: str, actual: str) -> bool:
    """A slow transcription of the rule as the method reference words it."""
    ws = " \t\n\v\f\r"
    split = lambda s: "".join(" " if c in ws else c for c in s).split(" ")  # noqa: E731
    low = lambda s: "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)  # noqa: E731
    a = [t for t in split(low(expected)) if t]
    b = [t for t in split(low(actual)) if t]
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            if "_" in x or "_" in y:
                return False
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not abs(fx - fy) < 1e-5:
            return False
    return True


token = st.one_of(
    st.sampled_from(["abc", "ABC", "1", "1.0", "1.000001", "-2", "2e-6", "0", "x1"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
)
output = st.lists(token, max_size=6).map(" ".join)


@given(output, output)
def test_matches_reference(expected: str, actual: str) -> None:
    assert outputs_match(expected, actual) is reference(expected, actual)


def test_tokens_ascii_whitespace_and_case() -> None:
    assert tokens(" A\tb\nC \x0b d\x0c\r") == ["a", "b", "c", "d"]
