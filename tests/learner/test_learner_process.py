"""The learner as a real process (torchrun, 2 gloo ranks) fed by a real ZeroMQ pusher of synthetic rollouts.

One run covers: malformed / duplicate rollouts are rejected and counted while training goes on; kill -9
mid-run then ``--resume auto`` continues at the checkpoint's step and version with no rollout trained on
twice and none lost (spooled rollouts consumed after the checkpoint are trained on again after the
resume); an actor-side weights receiver gets the final version with the same digest as the exported
checkpoint; ``rlef export`` writes a checkpoint transformers loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
import zmq

from helpers.processes import stable_free_ports
from helpers.rollouts import make_rollout
from rlef.common.config import load_config
from rlef.common.protocol.messages import encode, pack_floats, pack_ids
from rlef.common.protocol.transport import Transport

VOCAB = 97
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, model_dir: Path) -> Path:
    rollout, weights, control, _ = stable_free_ports(4)
    config = {
        "run": {"name": "learner-test", "output_dir": str(tmp / "runs"), "seed": 1},
        "model": {"path": str(model_dir), "max_seq_len": 128},
        "learner": {"batch_rollouts": 4, "updates_per_batch": 2, "micro_batch_tokens": 256, "total_updates": 16,
                    "lr": 1e-3, "warmup_steps": 2, "metrics_port": 0,
                    "checkpoint": {"every_batches": 2, "keep": 3}},
        "staleness": {"max_async_level": 1000},
        "endpoints": {"rollout_port": rollout, "weights_port": weights, "control_port": control},
        "weights": {"type": "zmq", "chunk_bytes": 65536, "poll_interval_s": 0.2},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Pusher:
    """Pushes valid rollouts (ids p-0, p-1, ...) and, every fifth, malformed and duplicate ones. Sends never
    block (a PUSH socket without a peer would): a frame the learner is not there to take is retried."""

    def __init__(self, config_path: Path):
        self.config = load_config(config_path)
        self.transport = Transport(self.config.transport)
        self.sock = self.transport.client(zmq.PUSH, self.config.endpoints.learner(self.config.endpoints.rollout_port))
        self.next = 0

    def _send(self, frame: bytes, give_up=lambda: False, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                if give_up():
                    return None
                if time.monotonic() > deadline:
                    raise AssertionError("the learner took no rollout for a minute")
                time.sleep(0.05)

    def bad_frames(self, i: int) -> list[bytes]:
        good = make_rollout(VOCAB, seed=10_000 + i, rollout_id=f"bad-{i}", turns=1)
        turn = good.turns[0]
        oov = good.replace(turns=[turn.replace(response_ids=pack_ids([VOCAB + 5]), logprobs=pack_floats([-1.0]))])
        nan = good.replace(turns=[turn.replace(logprobs=pack_floats([float("nan")] * turn.num_response_tokens))])
        return [b"\x00garbage", encode(oov), encode(nan), encode(make_rollout(VOCAB, seed=0, rollout_id="p-0"))]

    def push(self, n: int, give_up=lambda: False) -> None:
        for _ in range(n):
            i = self.next
            self._send(encode(make_rollout(VOCAB, seed=i, rollout_id=f"p-{i}", max_prompt=20, max_response=12)), give_up)
            if i % 5 == 4:
                for frame in self.bad_frames(i):
                    self._send(frame, give_up)
            self.next += 1

    def close(self) -> None:
        self.sock.close(0)
        self.transport.close()


def start_learner(config_path: Path, log_path: Path) -> subprocess.Popen:
    (master,) = stable_free_ports(1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={master}",
           "-m", "rlef.common.cli", "learner", "--config", str(config_path), "--resume", "auto"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def kill9(proc: subprocess.Popen) -> None:
    for pid in process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def batches(run_dir: Path) -> list[dict]:
    path = run_dir / "learner" / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spooled(run_dir: Path) -> int:
    """Whole rollout frames in the hub's spool (read without disturbing the learner: append mode, no writes)."""
    from rlef.learner.buffer import Spool

    path = run_dir / "learner" / "rollout-spool.bin"
    if not path.exists():
        return 0
    spool = Spool(path)
    try:
        return len(spool.read())
    finally:
        spool.close()


def wait_for(pred, timeout: float, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None and not pred():
            raise AssertionError(f"learner exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_resume_rejects_and_export(learner_model_dir, tmp_path):
    config_path = write_config(tmp_path, learner_model_dir)
    config = load_config(config_path)
    run_dir = config.run.run_dir
    log_path = tmp_path / "learner.log"
    pusher = Pusher(config_path)
    ckpt_root = run_dir / "checkpoints"
    proc = None
    try:
        # First run: 22 rollouts = 5 whole batches of 4 (checkpoint after batch 4) + 2 waiting; kill -9 it
        # while it waits for the sixth batch.
        proc = start_learner(config_path, log_path)
        pusher.push(22)
        wait_for(lambda: len(batches(run_dir)) >= 5, 240, proc, log_path)
        kill9(proc)
        first = batches(run_dir)
        assert len(first) == 5
        saved = json.loads(sorted(ckpt_root.glob("step-*[0-9]"))[-1].joinpath("trainer_state.json").read_text())
        assert saved["batches"] == 4 and saved["step"] == 8 and saved["version"] == 4
        lost = [b for b in first if b["batch"] > saved["batches"]]

        # Second run: resumes from that checkpoint and runs to total_updates (16 = 8 batches of U = 2).
        received: dict = {}
        from rlef.common.weights import make_receiver

        transport = Transport(config.transport)
        receiver = make_receiver(config, transport, "test-actor")
        stop_rx = threading.Event()

        def receive() -> None:
            while not stop_rx.is_set():
                got = receiver.poll(timeout_s=0.2)
                if got is not None:
                    received["latest"] = (got.version, {k: v.clone() for k, v in got.tensors.items()})

        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        proc = start_learner(config_path, log_path)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            pusher.push(1, give_up=lambda: proc.poll() is not None)
            time.sleep(0.1)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-4000:]
        # The real condition (was a bare 1 s sleep): the receiver holds the last version the learner published.
        end = time.monotonic() + 30
        while received.get("latest", (-1,))[0] != 8 and time.monotonic() < end:
            time.sleep(0.05)
        stop_rx.set()
        rx.join()
        receiver.close()
        transport.close()
    finally:
        pusher.close()
        if proc is not None and proc.poll() is None:
            kill9(proc)

    all_batches = batches(run_dir)
    # The resumed learner rolled the batch log back to its checkpoint: the lost batch is listed apart.
    assert all_batches[: saved["batches"]] == first[: saved["batches"]]
    rolled_back = [json.loads(line) for line in (run_dir / "learner" / "batches-rolled-back.jsonl").read_text().splitlines()]
    assert rolled_back == lost
    resumed = all_batches[saved["batches"]:]
    assert resumed[0]["batch"] == saved["batches"] + 1
    assert resumed[0]["step"] == saved["step"] + 2 and resumed[0]["version"] == saved["version"] + 1
    assert resumed[-1]["step"] == 16 and resumed[-1]["version"] == 8
    ids = [rid for b in all_batches for rid in b["rollout_ids"]]  # the batch log is the effective history
    assert len(ids) == len(set(ids)) == 8 * 4, "a rollout was trained on twice"
    assert not any(rid.startswith("bad-") for rid in ids)
    lost_ids = {rid for b in lost for rid in b["rollout_ids"]}
    assert lost_ids <= set(ids), "rollouts consumed after the checkpoint were lost by the crash"

    # Rejections were counted by reason and training went on.
    records = [json.loads(line) for line in (run_dir / "metrics" / "learner-0.jsonl").read_text().splitlines()]
    rejected = {k: v for rec in records for k, v in rec["values"].items() if k.startswith("rejected/")}
    for reason in ("decode", "token_out_of_vocab", "nonfinite_logprobs", "duplicate"):
        assert rejected.get(f"rejected/{reason}", 0) >= 1, (reason, rejected)

    # Export the final checkpoint; it loads in transformers and equals the last published version.
    final = sorted(ckpt_root.glob("step-*[0-9]"))[-1]
    assert final.name == "step-00000016"
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "rlef.common.cli", "export", str(final), str(out), "--config", str(config_path)],
                   cwd=ROOT, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    from transformers import AutoModelForCausalLM

    from rlef.common.weights import state_dict_digest

    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(str(learner_model_dir), local_files_only=True)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()
    version, tensors = received["latest"]
    assert version == 8
    assert state_dict_digest(tensors) == state_dict_digest(model.state_dict())


@pytest.mark.slow
def test_sigterm_writes_a_final_checkpoint_and_keeps_waiting_rollouts(learner_model_dir, tmp_path):
    """What a supervisor's stop does: the learner finishes its step, checkpoints, and exits; the rollouts still
    waiting stay unconsumed in the spool for the next --resume auto."""
    from rlef.learner.buffer import Spool

    config_path = write_config(tmp_path, learner_model_dir)
    run_dir = load_config(config_path).run.run_dir
    log_path = tmp_path / "learner.log"
    pusher = Pusher(config_path)
    proc = start_learner(config_path, log_path)
    try:
        pusher.push(6)  # one batch of 4 + 2 waiting (and one round of malformed frames)
        wait_for(lambda: len(batches(run_dir)) >= 1, 240, proc, log_path)
        # The precondition (was a bare 1 s sleep): the 2 rollouts beyond the batch reached the hub's spool.
        wait_for(lambda: spooled(run_dir) == 6, 120, proc, log_path)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
        code = proc.wait(timeout=120)
    finally:
        pusher.close()
        if proc.poll() is None:
            kill9(proc)
    log_text = log_path.read_text()
    # Both ranks stopped through the learner's own SIGTERM path (finish the step, checkpoint, return) ...
    assert log_text.count("learner done: step 2, version 1, 1 batches") == 2, log_text[-4000:]
    # ... and torchrun itself, signalled, ends with its SignalException: exit code 1 (never a kill by us).
    assert code == 1 and "SignalException: Process" in log_text, (code, log_text[-4000:])
    (final,) = sorted((run_dir / "checkpoints").glob("step-*"))
    assert final.name == "step-00000002" and (final / "COMPLETE").exists()
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["consumed"] == sorted(batches(run_dir)[0]["rollout_ids"])
    spool = Spool(run_dir / "learner" / "rollout-spool.bin")
    waiting = spool.read()
    spool.close()
    assert len(waiting) == 2
