"""The red-team corpus (tests/executor/redteam/*.py) through the real sandbox: one hostile property per program.

Each program's header says what it tries and what must come of it::

    # property: 4 forked children share the CPU-time limit ...
    # expect: timeout            (one status, or several separated by |)
    # stdin: ...                 (the test's input; default empty)
    # stdout: done               (the test's expected output; default empty)
    # stdout-lacks: secret       (must not appear in the captured stdout)
    # stderr-has: RecursionError (must appear in the stderr tail)
    # stderr-max: 4096           (the stderr tail is at most this many bytes)
    # time: 1   memory: BYTES    (the test's limits; default 1 s and 128 MiB)

Every program runs as the first test of a job whose second test is a canary: the same program, given
``__echo__``, must echo it and find no other process in the jail besides the runner. So each threat must get
its status AND leave the jail serving the next test with nothing of the threat still alive.

Run one by hand exactly the same way: ``rlef sandbox run tests/executor/redteam/fork_bomb.py --input
/dev/null --expected /dev/null --time-limit 1 --memory-limit 134217728``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlef.common.config import ExecutorConfig
from rlef.common.protocol.messages import Limits
from rlef.common.protocol.messages import TestCase as Case
from rlef.executor.sandbox import Sandbox

CORPUS = Path(__file__).with_name("redteam")
PROGRAMS = sorted(CORPUS.glob("*.py"))
SECRET_VAR, SECRET = "RLEF_REDTEAM_SECRET", "rlef-redteam-secret-hunter2"
CANARY = Case(input="__echo__", output="__echo__")
# Reads stdin with pread, so the program itself still finds all of its input.
PREFIX = (
    "import os as _os\n"
    "if _os.pread(0, 16, 0) == b'__echo__':\n"
    "    _others = sorted(int(p) for p in _os.listdir('/proc') if p.isdigit() and int(p) not in (1, _os.getpid()))\n"
    "    print('__echo__' if not _others else 'left alive: %s' % _others)\n"
    "    raise SystemExit\n"
)
HEADER_KEYS = {"property", "expect", "stdin", "stdout", "stdout-lacks", "stderr-has", "stderr-max", "time", "memory"}


def header(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep and key in HEADER_KEYS:
            out[key] = value
    return out


def test_corpus_is_complete() -> None:
    assert len(PROGRAMS) >= 50
    for path in PROGRAMS:
        meta = header(path)
        assert meta.get("property") and meta.get("expect"), f"{path.name}: header needs property and expect"
    topics = " ".join(p.stem for p in PROGRAMS)
    for topic in ("fork", "thread", "ptrace", "proc", "mount", "setuid", "kill", "zombie", "fds", "flood",
                  "environment", "tcp", "dns", "fill_tmp", "recursion", "binary"):
        assert topic in topics, f"no red-team program about {topic}"


@pytest.fixture(scope="module")
def hostile_sandbox() -> Iterator[Sandbox]:
    """A sandbox started while the host environment holds a secret the programs must not see."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_VAR, SECRET)
        sandbox = Sandbox(ExecutorConfig())
        yield sandbox
        sandbox.close()


def _param(path: Path):
    meta = header(path)
    slow = float(meta.get("time", 1)) > 2
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.slow
@pytest.mark.parametrize("path", [_param(p) for p in PROGRAMS])
def test_hostile_program(hostile_sandbox: Sandbox, path: Path) -> None:
    meta = header(path)
    assert os.environ.get(SECRET_VAR) == SECRET or "secret" not in meta.get("stdout-lacks", "")
    limits = Limits(time_s=float(meta.get("time", 1.0)), memory_bytes=int(meta.get("memory", 128 << 20)))
    threat = Case(input=meta.get("stdin", ""), output=meta.get("stdout", ""))
    outcome = hostile_sandbox.run(PREFIX + path.read_text(), [threat, CANARY], limits)
    assert outcome.compile_ok, outcome.compile_message
    result, canary = outcome.tests
    expected = meta["expect"].split("|")
    assert result.status in expected, f"{meta['property']}: got {result.status}\n{result}"
    assert canary.status == "pass", f"the jail did not serve the next test cleanly: {canary}"
    if "stdout-lacks" in meta:
        assert meta["stdout-lacks"] not in result.stdout
    if "stderr-has" in meta:
        assert meta["stderr-has"] in result.stderr, result.stderr
    if "stderr-max" in meta:
        assert len(result.stderr.encode("utf-8", errors="surrogateescape")) <= int(meta["stderr-max"])
