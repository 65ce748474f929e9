"""Support shared by the actor tests: the tiny-CPU config for a test, and a scripted backend (the test's own
policy: it answers with chosen texts through the real tokenizer)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from rlef.actor.backends.base import Generation, GenerationBackend, Sampling
from rlef.common.config import RlefConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def actor_config(tiny_model_dir: Path, *overrides: str) -> RlefConfig:
    return load_config(
        REPO / "configs/tiny-cpu.yaml",
        [f"model.path={tiny_model_dir}", "actor.metrics_port=0", "actor.execution_timeout_s=30",
         "executor.default_time_limit_s=2", *overrides],
    )


class ScriptedBackend(GenerationBackend):
    """A policy that answers with texts chosen by ``script(conversation_text, turn) -> str`` (turn is 1-based,
    counted from the user messages in the context), encoded with the real tokenizer plus the end-of-turn
    token. Log-probs are 0 (a deterministic policy). ``load_weights`` just records the version."""

    def __init__(self, tokenizer, script: Callable[[str, int], str]):
        self.tokenizer = tokenizer
        self.script = script
        self.version = 0
        self.calls: list[list[int]] = []

    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        self.calls.append(list(prompt_ids))
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        turn = text.count("<|im_start|>user")
        await asyncio.sleep(0)
        ids = self.tokenizer.encode(self.script(text, turn), add_special_tokens=False)[: sampling.max_new_tokens - 1]
        ids.append(sampling.stop_token_ids[0])
        return Generation(ids, [0.0] * len(ids), "stop", self.version)

    async def load_weights(self, received) -> None:
        self.version = received.version
