"""The paper's analyses (rlef.actor.analyses) against hand-computed values and sacrebleu's documented chrF,
plus the resumable episodes file of `rlef evaluate` and its executor probe."""

from __future__ import annotations

import json
from math import comb

import pytest

from rlef.actor import analyses as A
from rlef.actor.evaluation_episodes import (
    Progress,
    ResumeMismatchError,
    _check_resumable,
    read_episode_lines,
    remaining,
)
from rlef.actor.evaluation_scores import EpisodeSummary, count_problems
from rlef.common.data.problems import Problem


# ---------------------------------------------------------------------------------------------- chrF


def test_sacrebleu_chrf_matches_its_documented_value():
    # sacrebleu's README: this system against these two reference streams scores chrF2 = 59.73.
    from sacrebleu.metrics import CHRF

    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    system = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert round(CHRF().corpus_score(system, refs).score, 2) == 59.73


def test_code_distance_on_known_pairs():
    from sacrebleu.metrics import CHRF

    assert A.code_distance("print(1)\n", "print(1)\n") == 0.0
    assert A.code_distance("abc", "xyz") == 1.0  # no character n-gram in common
    prev, cur = "The dog bit the man.", "The dog had bit the man."
    # One sentence: the sentence score is the corpus score of a one-line corpus.
    assert A.code_distance(prev, cur) == pytest.approx(1 - CHRF().corpus_score([cur], [[prev]]).score / 100)
    small = A.code_distance("a, b = map(int, input().split())\nprint(a + b)\n", "a, b = map(int, input().split())\nprint(a * b)\n")
    assert 0.0 < small < 0.2 < A.code_distance("print(1)\n", "import sys\nfor line in sys.stdin:\n    pass\n")


def test_chrf_per_turn():
    same = "print(int(input()) * 2)\n"
    lines = [
        {"rollout_id": "a", "codes": [same, same, same]},              # resubmits: 0, 0
        {"rollout_id": "b", "codes": ["abc", "xyz"]},                   # 1 at turn 2
        {"rollout_id": "c", "codes": [None, same, "print(3)\n"]},      # turn 2 has no pair, turn 3 one
        {"rollout_id": "d", "codes": [same]},                           # one turn: nothing
    ]
    rows = {r["turn"]: r for r in A.chrf_per_turn(lines)}
    assert sorted(rows) == [2, 3]
    assert rows[2]["pairs"] == 2 and rows[2]["without_code"] == 1
    assert rows[2]["one_minus_chrf"]["mean"] == pytest.approx(0.5)
    assert rows[3]["pairs"] == 2 and rows[3]["without_code"] == 0
    assert rows[3]["one_minus_chrf"]["mean"] == pytest.approx(A.code_distance(same, "print(3)\n") / 2)
    md = A.chrf_markdown({"x": list(rows.values())})
    assert "| x | 1 -> 2 | 2 | 0.500 |" in md
    with pytest.raises(ValueError, match="no per-turn codes"):
        A.chrf_per_turn([{"rollout_id": "old", "turns": ["pass"]}])


# ---------------------------------------------------------------------------------------------- budgets

# Problem P: 6 rollouts of up to 3 turns, 2 correct (one of them solved at turn 1), 3 passing public.
MULTI = [
    EpisodeSummary("P", ("pass",), True),
    EpisodeSummary("P", ("wrong_answer", "pass"), True),
    EpisodeSummary("P", ("wrong_answer", "pass"), False),
    EpisodeSummary("P", ("wrong_answer", "wrong_answer", "wrong_answer"), False),
    EpisodeSummary("P", ("no_code", "wrong_answer", "timeout"), False),
    EpisodeSummary("P", ("runtime_error", "runtime_error", "runtime_error"), False),
]


def test_pass_per_problem_counts_every_turn_as_a_sample():
    counts = count_problems(["P", "S"], MULTI, [("S", "prompt_too_long")])
    # k = 6 samples buys 2 rollouts of 3 turns: pass@2 over 6 rollouts with 2 correct.
    assert A.pass_per_problem(counts, 6, 3) == {"P": pytest.approx(1 - comb(4, 2) / comb(6, 2)), "S": 0.0}
    # single-turn: k first turns, 1 of 6 correct at turn 1.
    assert A.pass_per_problem(counts, 3, 3, single=True)["P"] == pytest.approx(1 - comb(5, 3) / comb(6, 3))
    assert A.pass_per_problem(counts, 2, 3) == {}  # buys no rollout
    assert "P" not in A.pass_per_problem(counts, 21, 3)  # 7 rollouts needed, 6 sampled


def test_turn_limit_rows():
    t1 = count_problems(["P"], [EpisodeSummary("P", ("pass",), i < 3) for i in range(6)])  # 3 of 6 correct
    t3 = count_problems(["P"], MULTI)
    rows = A.turn_limit_rows({3: t3, 1: t1}, 6)
    assert [r["turn_limit"] for r in rows] == [1, 3] and [r["rollouts_drawn"] for r in rows] == [6, 2]
    assert rows[0]["pass@k"]["mean"] == 1.0  # all 6 drawn, 3 correct
    assert rows[0]["1@k"]["mean"] == pytest.approx(0.5)  # 6 public passes, 3 correct: one submitted uniformly
    assert rows[1]["pass@k"]["mean"] == pytest.approx(1 - comb(4, 2) / comb(6, 2))
    assert "| 1 | 6 | 50.0" in A.turn_limit_markdown(rows)
    with pytest.raises(KeyError):
        rows[0]["10@k"]


def test_budget_curves_and_plots(tmp_path):
    multi = count_problems(["P"], MULTI)
    single = count_problems(["P"], [EpisodeSummary("P", ("pass",) if i < 2 else ("wrong_answer",), i < 1) for i in range(9)])
    rows = A.budget_curves(multi, single, 3, [1, 3, 6, 9])
    by_k = {r["k"]: r for r in rows}
    assert by_k[1]["multi-turn"]["pass@k"] is None and by_k[1]["multi-turn"]["rollouts"] == 0
    assert by_k[1]["single-turn"]["pass@k"]["mean"] == pytest.approx(1 / 9)
    assert by_k[3]["multi-turn"]["pass@k"]["mean"] == pytest.approx(2 / 6)
    assert by_k[9]["single-turn"]["pass@k"]["mean"] == 1.0
    assert by_k[9]["multi-turn"]["pass@k"]["mean"] == pytest.approx(1 - comb(4, 3) / comb(6, 3))
    assert by_k[6]["multi-turn"]["10@k"]["mean"] == by_k[6]["multi-turn"]["pass@k"]["mean"]  # 10 >= 2 drawn
    assert A.budget_ks(100)[-1] == 100 and A.budget_ks(40)[-1] == 40
    assert "| 9 |" in A.budget_markdown(rows)
    turns = [{"turn": 1, "status": {"pass": 2, "wrong_answer": 4}}, {"turn": 2, "status": {"wrong_answer": 4}}]
    chrf = {"m": [{"turn": 2, "pairs": 1, "without_code": 0, "one_minus_chrf": {"mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}}]}
    comparison = {"rows": {"a/real": {"1@3": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}, "1@3 first turn": None}}}
    for path in (A.budget_plot(rows, tmp_path / "b.png"), A.errors_plot(turns, tmp_path / "e.png"),
                 A.chrf_plot(chrf, tmp_path / "c.png"), A.turn_limit_plot(A.turn_limit_rows({3: multi}, 6), tmp_path / "t.png"),
                 A.comparison_plot(comparison, tmp_path / "cmp.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- resuming


def _problem(pid: str) -> Problem:
    return Problem(pid, "sample", "valid", "d", [], [])


def test_remaining_runs_what_the_file_lacks():
    problems = [_problem("a"), _problem("b")]
    done = [{"problem_id": "a"}, {"problem_id": "a"}, {"problem_id": "a"}, {"problem_id": "b"}, {"problem_id": "zz"}]
    assert [p.problem_id for p in remaining(problems, done, 2)] == ["b"]
    assert [p.problem_id for p in remaining(problems, done, 4)] == ["a", "b", "b", "b"]
    assert remaining(problems, [], 1) == problems


def test_torn_lines_are_dropped(tmp_path):
    path = tmp_path / "episodes.jsonl"
    good = {"problem_id": "a", "turns": ["pass"], "final": {"passed": True}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good)[:17])  # killed mid-write
    assert read_episode_lines(path) == [good]
    assert read_episode_lines(tmp_path / "none.jsonl") == []


def test_resume_refuses_another_evaluation(tmp_path):
    settings = {"model": "m", "split": "valid", "temperature": 0.2}
    _check_resumable(tmp_path, settings, fresh=False)
    (tmp_path / "episodes.jsonl").write_text("{}\n")
    _check_resumable(tmp_path, settings, fresh=False)  # same settings: fine
    with pytest.raises(ResumeMismatchError, match="temperature: 0.2 there, 1.0 now"):
        _check_resumable(tmp_path, {**settings, "temperature": 1.0}, fresh=False)
    _check_resumable(tmp_path, {**settings, "temperature": 1.0}, fresh=True)
    assert not (tmp_path / "episodes.jsonl").exists()


def test_resume_refuses_episodes_of_other_weights_at_the_same_path(tmp_path):
    """A resumed run re-exports its final checkpoint into the same directory: the path is the same, the
    weights are not, and the old episodes must not count for the new weights."""
    import os

    from rlef.actor.evaluate import model_fingerprint

    model = tmp_path / "final-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"old weights")
    settings = {"model": str(model), "model_fingerprint": model_fingerprint(model), "split": "test"}
    out = tmp_path / "eval"
    _check_resumable(out, settings, fresh=False)
    (out / "episodes.jsonl").write_text("{}\n")
    assert model_fingerprint(model) == settings["model_fingerprint"]  # unchanged files: resumable
    _check_resumable(out, settings, fresh=False)
    (model / "model.safetensors").write_bytes(b"new weights")
    st = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    moved = {**settings, "model_fingerprint": model_fingerprint(model)}
    assert moved["model_fingerprint"] != settings["model_fingerprint"]
    with pytest.raises(ResumeMismatchError, match="model_fingerprint"):
        _check_resumable(out, moved, fresh=False)
    assert model_fingerprint(tmp_path / "no-such-dir") is None


def test_progress_eta():
    p = Progress(total=10, done=4, every_s=1e9)
    assert p.eta_s() is None and "ETA unknown" in p.line()
    p.advance()
    assert p.done == 5 and p.eta_s() is not None and "5/10 episodes" in p.line()


# ---------------------------------------------------------------------------------------------- the probe


def test_probe_fails_at_once_naming_the_endpoint():
    from helpers.executor_service import free_port

    from rlef.actor.local_sandboxes import NoExecutorError, probe
    from rlef.common.config import load_config

    port = free_port()
    config = load_config(None, [f"endpoints.broker_frontend_port={port}"])
    with pytest.raises(NoExecutorError, match=f"tcp://127.0.0.1:{port}") as err:
        probe(config, timeout_s=1.0)
    assert "--executors N" in str(err.value)


@pytest.mark.slow
def test_rlef_evaluate_without_an_executor_fails_naming_the_endpoint(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from helpers.executor_service import free_port

    port = free_port()
    rlef = str(Path(sys.executable).with_name("rlef"))
    proc = subprocess.run([rlef, "evaluate", "--probe-timeout", "2", "--output", str(tmp_path / "out"),
                           f"endpoints.broker_frontend_port={port}", "data.dataset=sample", "data.path=null"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"no executor answered at tcp://127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "out" / "episodes.jsonl").exists()  # nothing ran


def _sleeper(code: str = "import time; time.sleep(120)"):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code])


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def test_probe_waits_for_local_sandboxes_that_start_late():
    # `rlef evaluate --executors 1` on a loaded 2-core machine: the niced broker and executor took over 90 s to
    # come up and the 30 s probe failed the evaluation. With the children it started, the probe waits for them.
    import threading
    import time

    import zmq

    from helpers.executor_service import free_port

    from rlef.actor.local_sandboxes import probe
    from rlef.common.config import load_config
    from rlef.common.protocol.decoding import decode
    from rlef.common.protocol.messages import ExecutionJob, ExecutionResult, TestResult, encode

    port = free_port()
    config = load_config(None, [f"endpoints.broker_frontend_port={port}"])
    stop = threading.Event()

    def late_broker(delay_s: float = 2.5) -> None:  # binds only after delay_s, then answers every job: pass
        time.sleep(delay_s)
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://127.0.0.1:{port}")
        try:
            while not stop.is_set():
                if sock.poll(100):
                    identity, frame = sock.recv_multipart()
                    job = decode(frame, ExecutionJob)
                    sock.send_multipart([identity, encode(ExecutionResult(
                        job_id=job.job_id, compile_ok=True, tests=[TestResult(status="pass")], tests_total=1))])
        finally:
            sock.close()

    child = _sleeper()
    thread = threading.Thread(target=late_broker, daemon=True)
    thread.start()
    try:
        seconds = probe(config, timeout_s=1.0, children=[child], startup_s=60.0)
    finally:
        stop.set()
        thread.join(timeout=10)
        _stop(child)
    assert 2.0 < seconds < 30.0


def test_probe_fails_at_once_when_a_local_sandbox_exits(tmp_path):
    import time

    from helpers.executor_service import free_port

    from rlef.actor.local_sandboxes import NoExecutorError, probe
    from rlef.common.config import load_config

    config = load_config(None, [f"endpoints.broker_frontend_port={free_port()}"])
    alive, dead = _sleeper(), _sleeper("import sys; sys.exit(3)")
    dead.wait(timeout=30)
    started = time.monotonic()
    try:
        with pytest.raises(NoExecutorError, match=rf"exited with code 3 .*{tmp_path}"):
            probe(config, timeout_s=1.0, children=[alive, dead], startup_s=60.0, log_dir=tmp_path)
    finally:
        _stop(alive, dead)
    assert time.monotonic() - started < 5.0  # not the 60 s start-up allowance


def test_probe_gives_up_when_local_sandboxes_never_answer():
    import time

    from helpers.executor_service import free_port

    from rlef.actor.local_sandboxes import NoExecutorError, probe
    from rlef.common.config import load_config

    port = free_port()
    config = load_config(None, [f"endpoints.broker_frontend_port={port}"])
    child = _sleeper()
    started = time.monotonic()
    try:
        with pytest.raises(NoExecutorError, match=rf"tcp://127.0.0.1:{port}.*did not answer in [23] s"):
            probe(config, timeout_s=1.0, children=[child], startup_s=2.5)
    finally:
        _stop(child)
    assert 2.4 < time.monotonic() - started < 10.0
