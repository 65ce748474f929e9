"""Weights through a shared directory: one safetensors file per version, published atomically.

Layout: ``<path>/v{version:08d}/model.safetensors`` and ``<path>/v{version:08d}/manifest.json``
(``{"schema": "rlef.weights_fs/1", "version", "file", "bytes", "sha256"}``; sha256 of the file's bytes).
The learner writes both into ``<path>/.tmp-v{version:08d}-<pid>-<random>/``, fsyncs them, then renames the
directory into place (atomic on one filesystem): a reader sees a version whole or not at all. Only the last
``keep`` versions stay; older ones are removed after the new one is in place (keep >= 2 leaves a reader
that just picked the previous version time to load it).

Receivers scan the directory every ``poll_interval_s`` in a background thread, verify the newest complete
version's sha256, load it and hand it out through ``poll`` with ``path`` set to its file (vLLM's reload path
reads files). A version that fails verification is counted, logged and skipped (a newer one replaces it).
New versions are found by scanning; the control channel's version messages (``notify``) only make the next
scan happen at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch

from rlef.common.errors import WeightsError
from rlef.common.files import fsync_path
from rlef.common.weights.base import ReceivedWeights, ThreadedReceiver, WeightPublisher
from rlef.common.weights.packing import HASH_BLOCK
from rlef.monitoring import metrics_weights as M

log = logging.getLogger(__name__)

NAME = "filesystem"
SCHEMA = "rlef.weights_fs/1"
FILE = "model.safetensors"
MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v(\d{8,})$")


def version_dir(root: Path, version: int) -> Path:
    return root / f"v{version:08d}"


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def complete_versions(root: Path) -> list[int]:
    """Versions whose directory is in place (renamed in whole), ascending."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _VERSION_DIR.match(n)) and (root / n / MANIFEST).is_file())


def _unshared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied embeddings): clone the second and later ones."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        out[name] = tensor
    return out


class FilesystemPublisher(WeightPublisher):
    """Writes each version into the shared directory (atomically) and prunes old ones."""

    transport_name = NAME

    def __init__(self, root: Path, *, keep: int = 2):
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        # Versions already on disk belong to an earlier run of the learner: a resumed learner may publish
        # lower numbers again, and those replace what is there (see publish).
        self._version = -1

    @property
    def version(self) -> int:
        return self._version

    def publish(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if version <= self._version:
            raise WeightsError(f"weights version {version} published after version {self._version}: versions must increase")
        start = time.perf_counter()
        final = version_dir(self.root, version)
        tmp = self.root / f".tmp-v{version:08d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file(_unshared(state_dict), str(tmp / FILE), metadata={"version": str(version)})
            nbytes = (tmp / FILE).stat().st_size
            manifest = {"schema": SCHEMA, "version": version, "file": FILE, "bytes": nbytes, "sha256": file_sha256(tmp / FILE)}
            (tmp / MANIFEST).write_text(json.dumps(manifest))
            for name in (FILE, MANIFEST):
                fsync_path(tmp / name)
            fsync_path(tmp)
            # Versions >= this one on disk come from before a learner restart: retire them first, so the
            # newest version in the directory is always the one just published.
            for stale in [v for v in complete_versions(self.root) if v >= version]:
                self._retire(stale)
            tmp.rename(final)
            fsync_path(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._version = version
        self._prune()
        M.PUBLISH_SECONDS.labels(NAME).observe(time.perf_counter() - start)
        M.PUBLISHED_BYTES.labels(NAME).inc(nbytes)
        M.PUBLISHED_VERSION.labels(NAME).set(version)

    def _retire(self, version: int) -> None:
        # Rename first so a reader never sees a half-deleted directory under a version name.
        doomed = self.root / f".old-v{version:08d}-{uuid.uuid4().hex[:8]}"
        try:
            version_dir(self.root, version).rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _prune(self) -> None:
        for old in complete_versions(self.root)[: -self.keep]:
            self._retire(old)

    def close(self) -> None:
        pass


class FilesystemReceiver(ThreadedReceiver):
    """Scans the shared directory in a background thread and hands out the newest verified version."""

    transport_name = NAME

    def __init__(self, root: Path, receiver_id: str, *, poll_interval_s: float = 0.5):
        super().__init__(f"weights-fs-{receiver_id}")
        self.root = Path(root)
        self.receiver_id = receiver_id
        self.poll_interval_s = poll_interval_s
        self._rejected: set[int] = set()
        self.checksum_failures = 0
        self._start_thread()

    def close(self) -> None:
        self._stop_thread(wake=True)  # wake: the scan loop sleeps on _wake between scans

    def _run(self) -> None:
        while not self._stop.is_set():
            candidates = [v for v in complete_versions(self.root) if v > self._have and v not in self._rejected]
            if candidates:
                self._load(candidates[-1])
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _load(self, version: int) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = version_dir(self.root, version)
        started = time.monotonic()
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            if manifest.get("schema") != SCHEMA or manifest.get("version") != version:
                raise WeightsError(f"{directory / MANIFEST}: schema/version {manifest.get('schema')}/{manifest.get('version')}")
            path = directory / str(manifest["file"])
            digest = file_sha256(path)
            if digest != manifest["sha256"]:
                self.checksum_failures += 1
                M.CHECKSUM_FAILURES.labels(NAME).inc()
                raise WeightsError(f"{path}: sha256 {digest[:16]}... != manifest {str(manifest['sha256'])[:16]}...")
            tensors = load_file(str(path))
        except FileNotFoundError as exc:  # pruned between listing and reading: a newer one is there
            log.info("weights receiver %s: version %d vanished while loading (%s)", self.receiver_id, version, exc)
            return
        except (OSError, ValueError, KeyError, WeightsError, SafetensorError) as exc:
            self._rejected.add(version)
            M.RECEIVER_BAD_MESSAGES.labels(NAME).inc()
            log.warning("weights receiver %s: version %d in %s rejected, not applied: %s", self.receiver_id, version,
                        directory, exc)
            return
        seconds = time.monotonic() - started
        received = ReceivedWeights(version=version, tensors=tensors, path=path, checksum=digest,
                                   nbytes=path.stat().st_size if path.exists() else 0, seconds=seconds)
        M.RECEIVED_BYTES.labels(NAME).inc(received.nbytes)
        M.RECEIVE_SECONDS.labels(NAME).observe(seconds)
        M.RECEIVED_VERSION.labels(NAME).set(version)
        self._deliver(received)
