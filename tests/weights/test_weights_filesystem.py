"""The filesystem weights transport: atomic versions, verification, pruning, concurrent publish/read."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from weights_util import make_config, publish_and_receive, state_dict

from rlef.common.weights import make_publisher, make_receiver, state_dict_digest
from rlef.common.weights.filesystem import FILE, MANIFEST, FilesystemPublisher, FilesystemReceiver, complete_versions, version_dir


def test_publish_receive_prune_through_the_factories(tmp_path: Path, transport) -> None:
    config = make_config("weights.type=filesystem", f"weights.path={tmp_path}", "weights.keep=2")
    with make_publisher(config, transport) as pub, make_receiver(config, transport, "a0") as rec:
        for version in (1, 2, 3):
            got = publish_and_receive(pub, rec, version)
            assert got.path == version_dir(tmp_path, version) / FILE
    assert complete_versions(tmp_path) == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v00000002", "v00000003"]  # no temp dirs left


def test_half_written_and_unannounced_versions_are_never_read(tmp_path: Path) -> None:
    pub = FilesystemPublisher(tmp_path, keep=3)
    pub.publish(1, state_dict(1))
    # A writer that died mid-version leaves a temp dir; a version dir without its manifest is incomplete.
    crashed = tmp_path / ".tmp-v00000005-1-deadbeef"
    crashed.mkdir()
    (crashed / FILE).write_bytes((version_dir(tmp_path, 1) / FILE).read_bytes()[:100])
    incomplete = version_dir(tmp_path, 4)
    incomplete.mkdir()
    (incomplete / FILE).write_bytes(b"partial")
    with FilesystemReceiver(tmp_path, "a", poll_interval_s=0.05) as rec:
        got = rec.poll(timeout_s=10)
        assert got is not None and got.version == 1
        assert rec.poll(timeout_s=0.5) is None


def test_a_corrupt_version_is_rejected_counted_and_a_newer_one_taken(tmp_path: Path) -> None:
    pub = FilesystemPublisher(tmp_path, keep=5)
    pub.publish(1, state_dict(1))
    path = version_dir(tmp_path, 1) / FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with FilesystemReceiver(tmp_path, "a", poll_interval_s=0.05) as rec:
        assert rec.poll(timeout_s=1.0) is None
        assert rec.checksum_failures == 1  # counted once, then skipped
        pub.publish(2, state_dict(2))
        got = rec.poll(timeout_s=10)
        assert got is not None and got.version == 2
        assert state_dict_digest(got.tensors) == state_dict_digest(state_dict(2))
        assert rec.checksum_failures == 1


@pytest.mark.slow
def test_concurrent_publishing_never_shows_a_partial_version(tmp_path: Path) -> None:
    pub = FilesystemPublisher(tmp_path, keep=2)
    expected = {v: state_dict_digest(state_dict(v, scale=100)) for v in range(1, 11)}
    seen: list[tuple[int, str]] = []
    with FilesystemReceiver(tmp_path, "a", poll_interval_s=0.001) as rec:
        writer = threading.Thread(target=lambda: [pub.publish(v, state_dict(v, scale=100)) for v in expected])
        writer.start()
        while writer.is_alive() or (rec.version < 10):
            got = rec.poll(timeout_s=30)
            if got is None:
                break
            seen.append((got.version, state_dict_digest(got.tensors)))
        writer.join()
        assert rec.checksum_failures == 0
    assert seen and seen[-1][0] == 10
    assert all(expected[v] == digest for v, digest in seen)
    assert [v for v, _ in seen] == sorted({v for v, _ in seen})  # increasing, none twice


def test_tied_tensors_are_saved(tmp_path: Path) -> None:
    shared = torch.randn(8, 4)
    sd = {"embed.weight": shared, "lm_head.weight": shared}
    pub = FilesystemPublisher(tmp_path)
    pub.publish(1, sd)
    manifest = json.loads((version_dir(tmp_path, 1) / MANIFEST).read_text())
    assert manifest["version"] == 1 and len(manifest["sha256"]) == 64
    with FilesystemReceiver(tmp_path, "a") as rec:
        got = rec.poll(timeout_s=10)
        assert got is not None and state_dict_digest(got.tensors) == state_dict_digest(sd)


def test_a_restarted_learner_replaces_versions_left_by_its_earlier_run(tmp_path: Path) -> None:
    before = FilesystemPublisher(tmp_path, keep=3)
    for version in (8, 9, 10):
        before.publish(version, state_dict(version))
    resumed = FilesystemPublisher(tmp_path, keep=3)  # resumed from a checkpoint at version 8
    resumed.publish(9, state_dict(90))
    assert complete_versions(tmp_path) == [8, 9]
    with FilesystemReceiver(tmp_path, "late") as rec:
        got = rec.poll(timeout_s=10)
        assert got is not None and got.version == 9
        assert state_dict_digest(got.tensors) == state_dict_digest(state_dict(90))
