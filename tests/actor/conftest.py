"""Fixtures of the actor tests: one real executor service (broker + executor processes) per session, the tiny
model's tokenizer (the scripted backend and the test config are in tests/helpers/actor_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.executor_service import start_executor_service


@pytest.fixture(scope="session")
def executor_service(tmp_path_factory: pytest.TempPathFactory):
    """A real broker + one executor process with 2 nsjail workers."""
    with start_executor_service(tmp_path_factory.mktemp("actor-executor"), workers=2) as service:
        yield service


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))
