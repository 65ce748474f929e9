"""Exact token ids of each new segment of a multi-turn conversation, from the tokenizer's chat template.

A rollout stores, per turn, the ids of the NEW prompt segment and the ids of the response as sampled
(ending with the end-of-turn token). The learner concatenates them to rebuild the whole episode, so the
segments must be exactly what the chat template would produce for the whole conversation:

    first_prompt_ids(u1, prefill) + r1 + next_prompt_ids(u2) + r2 + ... == full_conversation_ids(messages)

where ``r_t = encode(assistant text) + [end-of-turn id]`` (with a prefill, the assistant text starts with
it and ``r_1`` holds only the part after the prefill).

How segments are cut: each segment's TEXT is the difference between two renderings of the template
(conversation so far vs. conversation plus the new user message and the generation prompt), cut right after
the end-of-turn token (``tokenizer.eos_token``) that closes the previous response, so whatever the template
puts between turns (ChatML's ``\\n``) belongs to the next prompt segment. Then the segment text is encoded
on its own (``add_special_tokens=False``: templates carry their own BOS).

Subtlety (BPE merges across boundaries): encoding a segment alone equals encoding it inside the whole
conversation only if no merge or pre-token spans the cut. Special tokens are split out before
pre-tokenisation, so a cut next to ``<|im_start|>``/``<|im_end|>`` is always clean. The one cut that is not
next to a special token is after the generation prompt ``<|im_start|>assistant\\n``: with a GPT-2 style
pre-tokeniser, a response starting with whitespace would merge with that ``\\n``. The tiny model's
tokenizer (rlef.common.models.tiny_model) isolates every ``\\n`` as its own pre-token, which makes that cut clean
too (verified by tests/common/test_common_chat.py with hypothesis text). A prefill is cut the same way:
clean when it ends with ``\\n`` under that tokenizer (HumanEval prompts do). For other tokenizers
:func:`check_segment_invariant` tells whether a given conversation round-trips.

The rollout keeps the SAMPLED response ids, which need not be the canonical encoding of the response text;
training uses the sampled ids, so that is what matters, and the invariant above is about the prompt side.
"""

from __future__ import annotations

from typing import Any, Sequence

Message = dict[str, str]

# Placeholder conversation used to render the text between two turns (any text works: it is cut away).
_DUMMY_USER = "u"
_DUMMY_ASSISTANT = "a"


def _render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise TypeError(f"chat template rendered {type(text).__name__}, expected str")
    return text


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without any added special token (BOS comes from the template, if at all)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def end_of_turn_id(tokenizer: Any) -> int:
    """The id that ends an assistant response (the tokenizer's eos token, ``<|im_end|>`` for the tiny model)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token: cannot tell where an assistant turn ends")
    return int(tokenizer.eos_token_id)


def first_prompt_text(tokenizer: Any, user_text: str, prefill: str = "") -> str:
    """Text of turn 1's prompt: the rendered user message, the generation prompt, then ``prefill``."""
    return _render(tokenizer, [{"role": "user", "content": user_text}], True) + prefill


def first_prompt_ids(tokenizer: Any, user_text: str, prefill: str = "") -> list[int]:
    """Ids of turn 1's prompt segment (the response is sampled right after them)."""
    return encode(tokenizer, first_prompt_text(tokenizer, user_text, prefill))


def next_prompt_text(tokenizer: Any, user_text: str) -> str:
    """Text appended after an assistant response that ended with the end-of-turn token."""
    before = _render(
        tokenizer, [{"role": "user", "content": _DUMMY_USER}, {"role": "assistant", "content": _DUMMY_ASSISTANT}], False
    )
    after = _render(
        tokenizer,
        [
            {"role": "user", "content": _DUMMY_USER},
            {"role": "assistant", "content": _DUMMY_ASSISTANT},
            {"role": "user", "content": user_text},
        ],
        True,
    )
    eot = tokenizer.eos_token
    cut = before.rfind(eot) if eot else -1
    if cut < 0 or not after.startswith(before[: cut + len(eot)]):
        raise ValueError(
            f"chat template does not close an assistant turn with the eos token {eot!r}: cannot cut segments"
        )
    return after[cut + len(eot) :]


def next_prompt_ids(tokenizer: Any, user_text: str) -> list[int]:
    """Ids of turn t>1's prompt segment: what follows the previous response's end-of-turn token."""
    return encode(tokenizer, next_prompt_text(tokenizer, user_text))


def response_ids(tokenizer: Any, assistant_text: str) -> list[int]:
    """The canonical ids of a finished response: its encoding plus the end-of-turn id."""
    return encode(tokenizer, assistant_text) + [end_of_turn_id(tokenizer)]


def full_conversation_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Ids of the whole conversation rendered by the chat template.

    A conversation ending with a user message gets the generation prompt (it is waiting for a response);
    one ending with an assistant message is closed. Rendered text up to the last end-of-turn token is
    encoded (anything a template appends after the last response, ChatML's ``\\n``, belongs to a next turn
    that does not exist).
    """
    if not messages:
        raise ValueError("empty conversation")
    ends_with_user = messages[-1]["role"] == "user"
    text = _render(tokenizer, messages, add_generation_prompt=ends_with_user)
    if not ends_with_user and tokenizer.eos_token:
        text = text[: text.rfind(tokenizer.eos_token) + len(tokenizer.eos_token)]
    return encode(tokenizer, text)


def conversation_segments(tokenizer: Any, messages: Sequence[Message], prefill: str = "") -> list[list[int]]:
    """Segments [prompt_1, response_1, prompt_2, response_2, ...] of an alternating user/assistant conversation.

    ``messages`` alternate user, assistant, user, ... (no system prompt, as in the paper). With ``prefill``,
    the first assistant message must start with it; response_1 then holds only the text after it.
    Used for supervised warm starts and to test the invariant against :func:`full_conversation_ids`.
    """
    segments: list[list[int]] = []
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"message {i} has role {message['role']!r}, expected {expected!r}")
        if i == 0:
            segments.append(first_prompt_ids(tokenizer, message["content"], prefill))
        elif expected == "user":
            segments.append(next_prompt_ids(tokenizer, message["content"]))
        else:
            text = message["content"]
            if i == 1 and prefill:
                if not text.startswith(prefill):
                    raise ValueError("the first assistant message does not start with the prefill")
                text = text[len(prefill) :]
            segments.append(response_ids(tokenizer, text))
    return segments


def check_segment_invariant(tokenizer: Any, messages: Sequence[Message], prefill: str = "") -> bool:
    """True when the concatenated segments equal :func:`full_conversation_ids` for ``messages``."""
    joined = [i for seg in conversation_segments(tokenizer, messages, prefill) for i in seg]
    return joined == full_conversation_ids(tokenizer, messages)
