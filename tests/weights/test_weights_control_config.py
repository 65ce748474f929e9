"""config_digest compared at registration: the real ControlServer / ControlClient (make_control_server /
make_control_client, as the learner hub and the actors build them) accept a peer whose config differs only
in per-process settings and refuse one whose shared keys differ, naming exactly those keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from weights_util import free_port

from rlef.common.config import RlefConfig, load_config
from rlef.common.protocol.config_digest import differing_keys, shared_config_digests
from rlef.common.protocol.control_client import ControlClient, make_control_client
from rlef.common.protocol.control_hub import make_control_server
from rlef.common.errors import PeerRefused
from rlef.common.protocol.transport import Transport
from test_weights_control import rebind, wait_until

#: Settings each process may choose for itself: none of them may change a digest.
PER_PROCESS = ["actor.episodes_in_flight=3", "actor.torch_threads=2", "actor.sampling.temperature=0.2",
               "actor.backend=vllm", "actor.metrics_port=9999", "executor.workers=7", "learner.lr=0.1",
               "learner.micro_batch_tokens=128", "reward.kl_beta=0.9", "run.name=elsewhere", "model.dtype=bfloat16",
               "monitoring.episode_samples.rate=0.5", "data.limit=5"]
#: One change per shared key, and the digest key it must show up under.
SHARED = {"prompt.template=humaneval": "prompt.template", "prompt.feedback_max_chars=100": "prompt.feedback_max_chars",
          "prompt.max_feedback_tests=1": "prompt.max_feedback_tests", "prompt.code_block=first": "prompt.code_block",
          "reward.solved=2.0": "reward.solved", "reward.unsolved=-2.0": "reward.unsolved",
          "reward.no_code_penalty=-0.5": "reward.no_code_penalty",
          "reward.no_code_penalty_stacks=false": "reward.no_code_penalty_stacks",
          "actor.max_turns=5": "actor.max_turns", "actor.random_feedback=true": "actor.random_feedback",
          "staleness.max_async_level=1": "staleness.max_async_level", "model.max_seq_len=512": "model"}


def fake_model(directory: Path, tokenizer: str = '{"vocab": 1}', arch: str = '{"vocab_size": 97}') -> Path:
    """The files the digest reads (weights are not compared: the hub sends its own)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(arch)
    (directory / "tokenizer.json").write_text(tokenizer)
    (directory / "chat_template.jinja").write_text("{{ messages }}")
    (directory / "model.safetensors").write_bytes(b"weights of this host")
    return directory


def config(model: Path, control_port: int, *overrides: str) -> RlefConfig:
    return load_config(None, [f"model.path={model}", f"endpoints.control_port={control_port}", *overrides])


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return fake_model(tmp_path / "model")


def test_per_process_settings_leave_every_digest_alone(model: Path) -> None:
    base = shared_config_digests(config(model, 1))
    for override in PER_PROCESS:
        assert shared_config_digests(config(model, 1, override)) == base, override


def test_each_shared_key_changes_exactly_its_digest(model: Path) -> None:
    base = shared_config_digests(config(model, 1))
    for override, key in SHARED.items():
        assert differing_keys(base, shared_config_digests(config(model, 1, override))) == [key], override


def test_model_files_compare_by_content_not_path(tmp_path: Path, model: Path) -> None:
    base = shared_config_digests(config(model, 1))
    same = fake_model(tmp_path / "mounted" / "elsewhere")
    assert shared_config_digests(config(same, 1)) == base
    other_tokenizer = fake_model(tmp_path / "t", tokenizer='{"vocab": 2}')
    assert differing_keys(base, shared_config_digests(config(other_tokenizer, 1))) == ["tokenizer"]
    other_arch = fake_model(tmp_path / "a", arch='{"vocab_size": 98}')
    assert differing_keys(base, shared_config_digests(config(other_arch, 1))) == ["model"]
    assert differing_keys(base, shared_config_digests(config(tmp_path / "absent", 1))) == ["model", "tokenizer"]


def test_hub_accepts_a_peer_that_differs_only_per_process(transport: Transport, model: Path) -> None:
    port = free_port()
    with make_control_server(config(model, port), transport, version=4) as hub, \
            make_control_client(config(model, port, *PER_PROCESS), transport, "actor-0", heartbeat_interval_s=0.05) as peer:
        assert peer.register(["rollouts"], timeout_s=10) == 4
        assert peer.registered and peer.refused is None and not peer.stop_requested
        assert [p.sender_id for p in hub.peers()] == ["actor-0"] and hub.refused == []


def test_hub_refuses_a_peer_whose_shared_config_differs_naming_the_keys(transport: Transport, model: Path) -> None:
    port = free_port()
    theirs = config(model, port, "reward.solved=2.0", "prompt.template=humaneval", "actor.max_turns=5",
                    "actor.episodes_in_flight=3")
    with make_control_server(config(model, port), transport, version=4) as hub, \
            make_control_client(theirs, transport, "actor-1", heartbeat_interval_s=0.05) as peer:
        with pytest.raises(PeerRefused) as err:
            peer.register(["rollouts"], timeout_s=10)
        assert "config differs from the learner's in: actor.max_turns, prompt.template, reward.solved (" in str(err.value)
        assert "actor-1" in str(err.value)
        assert not peer.registered and peer.stop_requested
        assert hub.peers() == [] and [sender for sender, _ in hub.refused] == ["actor-1"]


def test_hub_refuses_a_peer_that_sends_no_digests(transport: Transport, model: Path) -> None:
    port = free_port()
    cfg = config(model, port)
    with make_control_server(cfg, transport) as hub, \
            ControlClient(transport, cfg.endpoints.learner(port), "old-actor") as peer:
        with pytest.raises(PeerRefused, match="sent no config digests"):
            peer.register(timeout_s=10)
        assert hub.peers() == []


def test_a_restarted_hub_with_another_config_refuses_a_registered_peer(transport: Transport, model: Path) -> None:
    """Peers re-register when the hub's incarnation changes, so the new hub compares their config too."""
    port = free_port()
    with make_control_client(config(model, port), transport, "survivor", heartbeat_interval_s=0.05) as peer:
        with make_control_server(config(model, port), transport, version=1):
            peer.register(timeout_s=10)
        assert peer.registered
        with rebind(lambda: make_control_server(config(model, port, "reward.unsolved=-3.0"), transport, version=9)) as hub2:
            assert wait_until(lambda: peer.refused is not None)
            assert "reward.unsolved" in peer.refused and peer.stop_requested and not peer.registered
            assert wait_until(lambda: hub2.peers() == [])
