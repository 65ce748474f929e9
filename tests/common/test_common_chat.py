"""Chat segments: concatenated per-turn segment ids equal the ids of the whole templated conversation.

Uses the tiny model's tokenizer built in-process (no model weights needed: seconds).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlef.common.text.chat import (
    check_segment_invariant,
    conversation_segments,
    encode,
    end_of_turn_id,
    first_prompt_ids,
    first_prompt_text,
    full_conversation_ids,
    next_prompt_ids,
    next_prompt_text,
    response_ids,
)
from rlef.common.models.tiny_model import build_tokenizer, training_corpus


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(training_corpus())


def test_template_texts_are_chatml(tok):
    assert first_prompt_text(tok, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert first_prompt_text(tok, "hi", prefill="```python\n") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n```python\n"
    assert next_prompt_text(tok, "again") == "\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode([end_of_turn_id(tok)]) == "<|im_end|>"
    assert tok.pad_token_id is not None and tok.pad_token_id != end_of_turn_id(tok)


def test_segments_of_a_three_turn_episode(tok):
    msgs = [
        {"role": "user", "content": "Provide a Python solution: add two numbers."},
        {"role": "assistant", "content": "```python\nprint(sum(map(int, input().split())))\n```"},
        {"role": "user", "content": "Your code failed the following tests:\n\n- input `1 2\n` failed:\nExpected output `3\n` but got `4\n`"},
        {"role": "assistant", "content": "  \n```python\na, b = map(int, input().split())\nprint(a + b)\n```"},
        {"role": "user", "content": "Give it another try."},
        {"role": "assistant", "content": "\n\nok"},
    ]
    segs = conversation_segments(tok, msgs)
    assert len(segs) == 6
    assert segs[0] == first_prompt_ids(tok, msgs[0]["content"])
    assert segs[2] == next_prompt_ids(tok, msgs[2]["content"])
    assert segs[1] == response_ids(tok, msgs[1]["content"]) and segs[1][-1] == end_of_turn_id(tok)
    joined = [i for s in segs for i in s]
    assert joined == full_conversation_ids(tok, msgs)
    # The conversation so far plus a generation prompt: the ids the model sees before turn 3's response.
    assert [i for s in segs[:5] for i in s] == full_conversation_ids(tok, msgs[:5])


def test_newlines_are_isolated_so_the_cut_after_the_header_is_clean(tok):
    """The subtlety the tokenizer design removes: a GPT-2 style pre-tokeniser would merge the generation
    prompt's final "\\n" with a response starting with whitespace; every "\\n" is its own token here."""
    (newline,) = encode(tok, "\n")
    assert encode(tok, "\n\n  \n") == [newline, newline, *encode(tok, "  "), newline]
    assert encode(tok, "assistant\n  x") == encode(tok, "assistant\n") + encode(tok, "  x")


def test_prefill_segments(tok):
    prefill = "```python\ndef f(x):\n    \"\"\"Double x.\"\"\"\n"
    msgs = [
        {"role": "user", "content": "Complete the function."},
        {"role": "assistant", "content": prefill + "    return 2 * x\n```"},
    ]
    segs = conversation_segments(tok, msgs, prefill=prefill)
    assert segs[0] == first_prompt_ids(tok, "Complete the function.", prefill=prefill)
    assert check_segment_invariant(tok, msgs, prefill=prefill)
    with pytest.raises(ValueError, match="prefill"):
        conversation_segments(tok, [msgs[0], {"role": "assistant", "content": "no prefill"}], prefill=prefill)


def test_roles_must_alternate(tok):
    with pytest.raises(ValueError, match="role"):
        conversation_segments(tok, [{"role": "assistant", "content": "x"}])


# Text drawn from everything a conversation can hold: unicode, backticks, newlines, indentation, tabs,
# and pieces of the template's own syntax ("<|", "im_", role names) that must not break the cut.
_ALPHABET = st.sampled_from(list("ab xyz\n\t`'\"()[]{}:=<>|_#\\") + ["é", "ß", "中", "🙂", "\u00a0", "\r", "```", "```python\n", "im_start", "<|", "|>", "user", "assistant", "    "])
_TEXT = st.one_of(st.lists(_ALPHABET, max_size=40).map("".join), st.text(max_size=30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=3), trailing_user=st.booleans(), tail=_TEXT)
def test_segment_invariant_property(tok, turns, trailing_user, tail):
    msgs = []
    for user, assistant in turns:
        msgs.append({"role": "user", "content": user})
        msgs.append({"role": "assistant", "content": assistant})
    if trailing_user:
        msgs.append({"role": "user", "content": tail})
    joined = [i for seg in conversation_segments(tok, msgs) for i in seg]
    assert joined == full_conversation_ids(tok, msgs)
    # Decoding the joined ids gives back the template's text exactly (byte-level BPE is lossless).
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=trailing_user)
    assert tok.decode(joined, skip_special_tokens=False) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=_TEXT, prefill_body=_TEXT, rest=_TEXT)
def test_prefill_ending_in_newline_is_a_clean_cut(tok, user, prefill_body, rest):
    prefill = prefill_body + "\n"
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": prefill + rest}]
    assert check_segment_invariant(tok, msgs, prefill=prefill)
