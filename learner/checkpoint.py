"""Sharded learner checkpoints (torch.distributed.checkpoint) that a resumed run continues from exactly.

Layout of ``<checkpoint.dir>/step-<step:08d>/``:
- DCP files: ``policy``, ``value`` (model shards) and ``policy_optim``, ``value_optim`` (optimizer shards);
- ``trainer_state.json`` (rank 0): step, version, batches, scheduler states, consumed rollout ids;
- ``rng-rank<r>.pt``: each rank's torch RNG state (ranks differ, so not in the replicated DCP state);
- ``COMPLETE``: written last. A checkpoint is written into ``step-<step>.tmp`` and renamed into place after
  the marker, so a directory named ``step-*`` without ``.tmp`` is whole; ``--resume auto`` takes the newest
  one that holds the marker, ignoring anything torn by a crash. Only the newest ``keep`` are kept.
The directory must be shared by all ranks (it is on one node; a shared filesystem across nodes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from rlef.common.files import fsync_path
from rlef.common.errors import RlefError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"


class CheckpointError(RlefError):
    """A checkpoint is missing, incomplete or does not fit the models."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Whole checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")
             and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(spec: str, root: Path) -> Path | None:
    """``auto``: newest complete checkpoint under root (None if there is none); ``none``: None; else a path."""
    if spec == "none":
        return None
    if spec == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / COMPLETE).exists():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {COMPLETE} marker)")
    return path


def _sharded_state(learner) -> dict[str, Any]:
    return {
        "policy": get_model_state_dict(learner.policy),
        "value": get_model_state_dict(learner.value),
        "policy_optim": get_optimizer_state_dict(learner.policy, learner.optimizers["policy"]),
        "value_optim": get_optimizer_state_dict(learner.value, learner.optimizers["value"]),
    }


def save(learner, root: Path, *, version: int, batches: int, consumed: list[str], keep: int) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    rank = dist.get_rank()
    final = step_dir(root, learner.step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_sharded_state(learner), checkpoint_id=str(tmp))
    torch.save({"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        state = {
            "step": learner.step, "version": version, "batches": batches, "world_size": dist.get_world_size(),
            "schedulers": {k: s.state_dict() for k, s in learner.schedulers.items()},
            "consumed": sorted(consumed),
        }
        _write_synced(tmp / TRAINER_STATE, json.dumps(state).encode())
        _write_synced(tmp / COMPLETE, b"")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(learner, path: Path) -> dict[str, Any]:
    """Collective: restore models, optimizers, schedulers, step and this rank's RNG; returns trainer_state."""
    state = json.loads((path / TRAINER_STATE).read_text())
    sharded = _sharded_state(learner)
    dcp.load(sharded, checkpoint_id=str(path))
    set_model_state_dict(learner.policy, sharded["policy"])
    set_model_state_dict(learner.value, sharded["value"])
    set_optimizer_state_dict(learner.policy, learner.optimizers["policy"], sharded["policy_optim"])
    set_optimizer_state_dict(learner.value, learner.optimizers["value"], sharded["value_optim"])
    for name, sched in learner.schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    learner.step = int(state["step"])
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.exists():  # a resume on a different world size keeps fresh RNG on the new ranks
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def export_hf(checkpoint: Path, out_dir: Path, model_path: str | Path) -> Path:
    """Write the checkpoint's policy as a Hugging Face checkpoint (safetensors + config + tokenizer files).

    Runs in one process without torch.distributed: DCP reads the sharded policy into a plain model.
    """
    from rlef.learner import models

    if not (checkpoint / COMPLETE).exists():
        raise CheckpointError(f"{checkpoint}: not a complete checkpoint (no {COMPLETE} marker)")
    config = models.hf_config(model_path)
    model = models.build(config)
    state = {"policy": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    model.load_state_dict(state["policy"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    copied = 0
    for src in Path(model_path).iterdir():
        if src.is_file() and (src.name.startswith("tokenizer") or src.name in ("special_tokens_map.json", "vocab.json",
                                                                               "merges.txt", "chat_template.jinja",
                                                                               "generation_config.json")):
            shutil.copy2(src, out_dir / src.name)
            copied += 1
    log.info("exported %s to %s (%d tokenizer/generation files copied from %s)", checkpoint, out_dir, copied, model_path)
    return out_dir
