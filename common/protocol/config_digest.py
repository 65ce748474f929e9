"""Digests of the config parts every role must agree on, compared when a peer registers with the hub.

Scope: what decides the meaning of a rollout. The actor builds prompts, feedback and rewards, and the learner
trains on them with its own tokenizer and model; if the two disagree on any of these, the learner silently
trains on rollouts that mean something else. Compared (one digest per key, so a refusal names the keys):

- ``model``: the model's config.json (architecture, vocabulary size) and ``model.max_seq_len``;
- ``tokenizer``: the tokenizer and chat-template files in ``model.path``;
- ``prompt.*``: the prompt template and every feedback setting;
- ``reward.*`` except ``kl_beta`` (the learner's alone; actors never read it);
- ``actor.max_turns`` and ``actor.random_feedback``: the episode's shape and the feedback shown;
- ``staleness.max_async_level``: both sides derive their lag limits from it (StalenessConfig).

Files are hashed by content, not by path: hosts may mount the same model at different places. Everything else
(threads, ports, episodes in flight, sampling, devices, paths) is per process and stays free.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rlef.common.config import RlefConfig

#: Prefix of the digest entries in a register message's ``info`` (one entry per key).
INFO_PREFIX = "digest:"
#: Files of a Hugging Face checkpoint that define its tokenization and chat template (absent ones are skipped).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
MODEL_FILES = ("config.json",)
_SECTION_EXCLUDED = {"reward": {"kl_beta"}}
_SECTIONS = ("prompt", "reward")
_FIELDS = (("actor", "max_turns"), ("actor", "random_feedback"), ("staleness", "max_async_level"))


def _short(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _value_digest(value: Any) -> str:
    return _short(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def _files_digest(directory: Path, names: tuple[str, ...]) -> str:
    """Digest of the named files' contents; a missing directory digests its path (so it differs from a real one)."""
    if not directory.is_dir():
        return _value_digest({"missing": str(directory)})
    h = hashlib.sha256()
    for name in names:
        path = directory / name
        if path.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def shared_config_digests(config: RlefConfig) -> dict[str, str]:
    """One short digest per key that must agree across roles (module docstring)."""
    model_dir = Path(config.model.path)
    digests = {
        "model": _value_digest([_files_digest(model_dir, MODEL_FILES), config.model.max_seq_len]),
        "tokenizer": _files_digest(model_dir, TOKENIZER_FILES),
    }
    dumped = config.model_dump(mode="json")
    for section in _SECTIONS:
        for key, value in dumped[section].items():
            if key not in _SECTION_EXCLUDED.get(section, set()):
                digests[f"{section}.{key}"] = _value_digest(value)
    for section, key in _FIELDS:
        digests[f"{section}.{key}"] = _value_digest(dumped[section][key])
    return digests


def combined_digest(digests: dict[str, str]) -> str:
    """One digest of the whole map (what the hub's ack carries as ``config_digest``)."""
    return _value_digest(digests)


def to_info(digests: dict[str, str]) -> dict[str, str]:
    """The map as register-message ``info`` entries (``digest:<key>``)."""
    return {INFO_PREFIX + key: value for key, value in digests.items()}


def from_info(info: dict[str, Any]) -> dict[str, str]:
    """The digest map a peer sent in its register ``info`` (entries of other kinds ignored)."""
    return {key[len(INFO_PREFIX):]: value for key, value in info.items()
            if key.startswith(INFO_PREFIX) and isinstance(value, str)}


def differing_keys(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """Keys whose digests differ, or that only one side has, sorted."""
    return sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))


def config_digest(config: RlefConfig) -> str:
    """One digest of the config parts every role must agree on (this module)."""
    return combined_digest(shared_config_digests(config))


def refusal(hub_digests: dict[str, str], info: dict) -> str | None:
    """Why the hub refuses a peer whose register ``info`` is this (None: accepted)."""
    theirs = from_info(info)
    if not theirs:
        return "the peer sent no config digests (an older rlef, or a client made without make_control_client)"
    differ = differing_keys(hub_digests, theirs)
    if not differ:
        return None
    return f"config differs from the learner's in: {', '.join(differ)} (start every role with the same config for these keys)"
