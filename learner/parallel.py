"""torch.distributed set-up and FSDP2 sharding of the learner's models (gloo on CPU, nccl on GPU: same code).

``parallelize`` applies ``fully_shard`` to every decoder layer and then to the root, after optional
activation checkpointing, with a MixedPrecisionPolicy (bf16 compute, fp32 reduce, fp32 master weights) when
``learner.mixed_precision`` is set. Models are always created on the meta device and materialised shard by
shard; rank 0 alone reads the checkpoint and ``set_model_state_dict(broadcast_from_rank0=True)`` scatters it,
so no rank but 0 ever holds a full copy.
"""

from __future__ import annotations

import datetime as _dt
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from rlef.learner.models import decoder_layer_types, rebuild_rotary

# Rank 0 may wait a long time for rollouts while the other ranks sit in a broadcast: a generous timeout.
PROCESS_GROUP_TIMEOUT = _dt.timedelta(hours=6)


def init_distributed(backend: str, device_kind: str) -> tuple[int, int, torch.device]:
    """Join the torchrun group (or a single-process group when launched alone); returns rank, world, device."""
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    if device_kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parallelize(model: nn.Module, *, mixed_precision: bool, activation_checkpointing: bool) -> nn.Module:
    """Shard ``model`` (still on meta) per decoder layer and at the root."""
    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    layer_types = decoder_layer_types(model)
    for module in model.modules():
        if isinstance(module, layer_types):
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def materialize(model: nn.Module, full_state: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Allocate the shards on ``device`` and fill them from rank 0's ``full_state`` (None on other ranks)."""
    model.to_empty(device=device)
    rebuild_rotary(model, device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    # A shallow copy: set_model_state_dict replaces the entries of the dict it is given with DTensors, and
    # the same full state feeds more than one model (policy and reference).
    set_model_state_dict(model, dict(full_state) if dist.get_rank() == 0 and full_state else {}, options=options)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model on CPU on rank 0 ({} elsewhere). Collective: every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if dist.get_rank() == 0 else {}
