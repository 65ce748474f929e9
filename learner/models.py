"""The learner's three models, built from a local Hugging Face checkpoint (never a hub id).

- policy: ``AutoModelForCausalLM`` of the checkpoint (trained);
- value: the same architecture and weights with ``lm_head`` replaced by a freshly initialised
  ``Linear(hidden, 1)`` scalar head (read at the last prompt token of each turn); embeddings are untied so
  the head never aliases the input embedding;
- reference rho: the frozen initial policy (never refreshed, as the paper assumes).

This module knows nothing of sharding: rlef.learner.parallel builds these on the meta device, shards them and
loads the full state dict from rank 0. Full state dicts here are plain name -> tensor maps in HF naming, so
``rlef export`` and every weights receiver see the checkpoint's own parameter names.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hf_config(model_path: str | Path, *, value_head: bool = False):
    """The checkpoint's config (local files only); for the value model with untied embeddings."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_path), local_files_only=True)
    if value_head:
        config.tie_word_embeddings = False
    return config


def build(config, *, value_head: bool = False) -> nn.Module:
    """Instantiate the architecture on the current default device (use ``torch.device('meta')`` for no memory)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if value_head:
        model.lm_head = nn.Linear(config.hidden_size, 1, bias=True)
    return model


def load_policy_state_dict(model_path: str | Path) -> dict[str, torch.Tensor]:
    """Full float32 state dict of the checkpoint (rank 0 only: it holds the whole model in CPU memory)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32, local_files_only=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "lm_head.weight" not in state and getattr(model, "lm_head", None) is not None:
        state["lm_head.weight"] = model.lm_head.weight.detach().clone()
    return state


def value_state_dict(policy_state: dict[str, torch.Tensor], hidden_size: int, seed: int,
                     init_std: float | None = None) -> dict[str, torch.Tensor]:
    """The policy's weights with a new scalar head: weight ~ N(0, init_std^2) (seeded; default 1/hidden), bias 0."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in policy_state.items() if not k.startswith("lm_head.")}
    std = init_std if init_std is not None else 1.0 / hidden_size**0.5
    state["lm_head.weight"] = torch.randn(1, hidden_size, generator=gen) * std
    state["lm_head.bias"] = torch.zeros(1)
    return state


def rebuild_rotary(model: nn.Module, device: torch.device) -> None:
    """Recreate rotary-embedding modules: their ``inv_freq`` buffers are non-persistent, so a model
    materialised from the meta device (``to_empty``) holds garbage there, and no state dict restores it."""
    for name, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, type(module)(config=module.config).to(device))


def decoder_layer_types(model: nn.Module) -> tuple[type, ...]:
    """The transformer block classes (HF's ``_no_split_modules``): the unit of FSDP sharding and checkpointing."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"{type(model).__name__}: no decoder layer class found (_no_split_modules={sorted(names)})")
    return tuple(found)
