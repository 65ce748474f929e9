"""Fixtures shared by every test area. Keep each fixture small and documented; areas append their own below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach a hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama + ChatML tokenizer checkpoint (rlef.common.models.tiny_model), built once per session.

    Reuses ``artifacts/tiny-model`` when it holds what the builder would make now (the README's setup
    command makes it); otherwise builds one with the default warm start (about a minute) into a temp dir.
    Treat it as read-only: copy it before writing into it.
    """
    from rlef.common.models.tiny_model import is_current, make_tiny_model

    artifact = REPO / "artifacts" / "tiny-model"
    if is_current(artifact):
        return artifact
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")
