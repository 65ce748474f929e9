"""The actor's sampled episodes (rlef.actor.samples): every record still reaches the real sink, a seeded share
is written under RUN_DIR/samples/<actor>/, and a sample that cannot be written never stops the actor."""

from __future__ import annotations

import asyncio
import shutil

from helpers.episode_records import fixed_by_feedback, ignored_feedback, never_code, solved_first

from rlef.actor.samples import SamplingSink, episode_sample
from rlef.actor.sinks import ListSink
from rlef.common.config import EpisodeSamplesConfig
from rlef.monitoring import metrics_actor as M
from rlef.monitoring.episode_samples import read_samples


def _send_all(sink, records) -> None:
    async def go():
        for r in records:
            await sink.send(r)
    asyncio.run(go())


def test_every_record_forwarded_and_sampled_at_rate_one(tmp_path):
    inner = ListSink()
    sink = SamplingSink(inner, tmp_path, "actor-0", EpisodeSamplesConfig(rate=1.0))
    records = [fixed_by_feedback(rollout_id="a-1"), ignored_feedback(rollout_id="a-2", version=3), never_code(rollout_id="a-3"),
               solved_first(rollout_id="a-4")]
    _send_all(sink, records)
    sink.close()
    assert inner.records == records
    samples = read_samples(tmp_path)
    assert [s["rollout_id"] for s in samples] == ["a-1", "a-2", "a-3", "a-4"]
    fixed, ignored, nocode, first = samples
    assert fixed.fixed_by_feedback and not fixed.ignored_feedback and fixed.solved
    assert ignored.ignored_feedback and not ignored.fixed_by_feedback and ignored.versions == (3, 3)
    assert nocode.never_code and nocode.final_status == "no_code"
    assert not (first.fixed_by_feedback or first.ignored_feedback or first.never_code)
    # The readable parts the issue asks for, turn by turn.
    turn1 = fixed.turns[0]
    assert turn1["prompt_text"].startswith("Provide a Python solution") and "print(a - b)" in turn1["code"]
    assert turn1["status"] == "wrong_answer" and turn1["feedback"] == fixed.turns[1]["prompt_text"]
    assert fixed["rewards"] == [0.0, 1.0] and fixed["timings"]["total_s"] == 1.5 and fixed.turns[1]["feedback"] is None


def test_rate_is_a_seeded_fraction(tmp_path):
    def written(seed: int, name: str) -> list[str]:
        sink = SamplingSink(ListSink(), tmp_path / name, "actor-0", EpisodeSamplesConfig(rate=0.25), seed=seed)
        _send_all(sink, [solved_first(rollout_id=f"r-{i}") for i in range(400)])
        sink.close()
        return [s["rollout_id"] for s in read_samples(tmp_path / name)]

    a, b = written(7, "a"), written(7, "b")
    assert a == b and 60 <= len(a) <= 140  # 100 expected
    assert written(8, "c") != a
    sink = SamplingSink(ListSink(), tmp_path / "off", "actor-0", EpisodeSamplesConfig(enabled=False))
    _send_all(sink, [solved_first()])
    assert sink.writer is None and not (tmp_path / "off").exists()


def test_size_cap_keeps_the_newest(tmp_path):
    cfg = EpisodeSamplesConfig(rate=1.0, max_bytes=1 << 16, file_bytes=1 << 13)
    sink = SamplingSink(ListSink(), tmp_path, "actor-0", cfg)
    _send_all(sink, [ignored_feedback(rollout_id=f"r-{i}") for i in range(300)])
    sink.close()
    files = list((tmp_path / "samples" / "actor-0").glob("episodes-*.jsonl"))
    assert sum(f.stat().st_size for f in files) <= cfg.max_bytes and len(files) > 2
    ids = [s["rollout_id"] for s in read_samples(tmp_path)]
    assert ids[-1] == "r-299" and "r-0" not in ids and len(ids) < 300


def test_unwritable_samples_never_stop_the_actor(tmp_path, caplog):
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run directory should be")
    errors = M.EPISODE_SAMPLE_ERRORS._value.get()
    inner = ListSink()
    sink = SamplingSink(inner, blocker, "actor-0", EpisodeSamplesConfig(rate=1.0))
    _send_all(sink, [solved_first(), never_code()])
    assert len(inner.records) == 2 and sink.writer is None
    assert M.EPISODE_SAMPLE_ERRORS._value.get() == errors + 1

    # The directory vanishes mid-run and becomes a file: each rotation fails, logged once, the actor goes on.
    ok = tmp_path / "ok"
    sink = SamplingSink(inner, ok, "actor-0", EpisodeSamplesConfig(rate=1.0, file_bytes=1 << 12, max_bytes=1 << 16))
    _send_all(sink, [solved_first()])
    shutil.rmtree(ok / "samples" / "actor-0")
    (ok / "samples" / "actor-0").write_text("not a directory")
    caplog.clear()
    _send_all(sink, [ignored_feedback() for _ in range(5)])
    sink.close()
    assert len(inner.records) == 8
    assert M.EPISODE_SAMPLE_ERRORS._value.get() >= errors + 3
    assert sum("episode sample not written" in r.message for r in caplog.records) == 1


def test_texts_are_capped():
    long = fixed_by_feedback()
    long.turns[0].response_text = "x" * 5000
    sample = episode_sample(long, max_text_chars=1000)
    assert len(sample["turns"][0]["response_text"]) < 1100 and "4000 more characters" in sample["turns"][0]["response_text"]
