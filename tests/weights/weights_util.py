"""Helpers of the weights/control tests (a uniquely named module: tests/ has no packages): free ports,
configs pointing at them, a transport fixture, model-like state dicts and a version sent through a transport."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlef.common.config import RlefConfig, load_config
from rlef.common.protocol.transport import Transport
from rlef.common.weights import ReceivedWeights, WeightPublisher, WeightReceiver, state_dict_digest

PEER = Path(__file__).with_name("weights_peer.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(*overrides: str) -> RlefConfig:
    ports = [
        f"endpoints.weights_port={free_port()}",
        f"endpoints.control_port={free_port()}",
    ]
    return load_config(None, ports + list(overrides))


def zmq_config(*overrides: str) -> RlefConfig:
    return make_config("weights.type=zmq", "weights.chunk_bytes=4096", "weights.credit=4",
                       "weights.poll_interval_s=0.05", *overrides)


def state_dict(seed: int, scale: int = 1) -> dict[str, torch.Tensor]:
    """A small model-like state dict with every supported dtype, odd sizes (padding) and a 0-dim tensor."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(37 * scale, 16, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).bfloat16(),
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 11, generator=g).half(),
        "model.norm.weight": torch.randn(16, generator=g),
        "lm_head.weight": torch.randn(37 * scale, 16, generator=g),
        "step": torch.tensor(seed, dtype=torch.int64),
        "ids": torch.randint(0, 1000, (3,), generator=g, dtype=torch.int32),
        "mask": torch.rand(5, generator=g) > 0.5,
        "bytes": torch.randint(0, 255, (7,), generator=g, dtype=torch.uint8),
        "empty": torch.empty(0, 4),
    }


def publish_and_receive(pub: WeightPublisher, rec: WeightReceiver, version: int, timeout_s: float = 20) -> ReceivedWeights:
    """Publish ``state_dict(version)``: the receiver gets that version, whole and equal (canonical digest)."""
    sd = state_dict(version)
    pub.publish(version, sd)
    got = rec.poll(timeout_s=timeout_s)
    received = None if got is None else got.version
    assert got is not None and got.version == version, f"published version {version}, received version {received}"
    assert state_dict_digest(got.tensors) == state_dict_digest(sd), f"version {version} arrived different"
    return got


@pytest.fixture
def transport() -> Iterator[Transport]:
    t = Transport(RlefConfig().transport)
    yield t
    t.close()


def python() -> str:
    return sys.executable
