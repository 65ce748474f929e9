"""Learner test fixtures: a tiny Llama checkpoint built locally (no download), shared by the learner tests."""

from __future__ import annotations

from pathlib import Path

import pytest



def build_tiny_llama(path: Path, vocab_size: int = 97, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def learner_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32, vocab 97, untied embeddings): small enough for multi-rank CPU tests."""
    return build_tiny_llama(tmp_path_factory.mktemp("learner-model") / "tiny")
