"""rlef.common.log_limit: what a peer can make a process log is bounded by time, and cannot forge lines."""

from __future__ import annotations

import logging

import pytest

from rlef.common.log_limit import LogLimiter, LogOnce, printable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_at_most_burst_lines_a_window_and_a_summary_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("t.limit"), "bad frames", burst=3, window_s=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.limit"):
        logged = [limiter.warning("frame %d", i) for i in range(1000)]
        assert logged == [True] * 3 + [False] * 997 and limiter.suppressed == 997
        clock.now = 61.0
        assert limiter.info("frame %d", 1000)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["frame 0", "frame 1", "frame 2",
                        "bad frames: 997 similar warnings were not logged in the last 60 s (only counted)", "frame 1000"]
    assert caplog.records[-1].levelno == logging.INFO and limiter.suppressed_total == 997


def test_peer_text_cannot_forge_lines(caplog: pytest.LogCaptureFixture) -> None:
    limiter = LogLimiter(logging.getLogger("t.forge"), "x")
    with caplog.at_level(logging.WARNING, logger="t.forge"):
        limiter.warning("dropped from %s: %s", b"\n\x1b[2J", "field `a\n2026-12-01 INFO forged`" + "y" * 5000)
    (record,) = caplog.records
    text = record.getMessage()
    assert "\n" not in text and "\x1b" not in text and len(text) < 1000
    assert "a\\n2026-12-01 INFO forged" in text


@pytest.mark.parametrize("value,expected", [("plain", "plain"), ("é\t", "\\xe9\\t"), (b"\x00a", "b'\\x00a'"), ("x" * 500, "x" * 400 + "...")])
def test_printable(value: object, expected: str) -> None:
    assert printable(value) == expected


def test_log_once_logs_each_key_once_and_remembers_at_most_max_keys(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(logging.getLogger("t.once"), "drops", max_keys=2, burst=100)
    with caplog.at_level(logging.WARNING, logger="t.once"):
        logged = [once.warning(key, "drop from %s", key) for key in ["a", "a", "b", "a", "b", "c", "c"]]
    # "c" arrives after two keys are remembered: not logged, and the set does not grow (a peer controls keys).
    assert logged == [True, False, True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == ["drop from a", "drop from b"] and once.seen == {"a", "b"}
