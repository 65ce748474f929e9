"""Prometheus file-based service discovery (file_sd) target files.

Scope: write the JSON target list Prometheus' ``file_sd_configs`` watch, for the local launcher and the SLURM
batch script. Invariants: the file is replaced atomically (write to a temporary sibling, then ``rename``), so
Prometheus never reads half a file; each target group carries ``job`` as a label, and the scrape config
(monitoring/prometheus/prometheus-local.yml) keeps it, so one file_sd job can hold every role.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from rlef.common.errors import ConfigError

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ADDRESS = re.compile(r"^[^\s:/]+:\d{1,5}$")

Target = tuple[str, str, Mapping[str, str]]


def target_groups(targets: Iterable[Target]) -> list[dict]:
    """File_sd groups for (job, "host:port", labels) triples: one group per target, ``job`` as a label."""
    groups: list[dict] = []
    for job, address, labels in targets:
        if not _ADDRESS.match(address):
            raise ConfigError(f"file_sd target {address!r} of job {job!r} is not host:port")
        merged = {"job": job, **{str(k): str(v) for k, v in labels.items()}}
        for name in merged:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ConfigError(f"file_sd target {address!r}: label name {name!r} is not a valid Prometheus label")
        groups.append({"targets": [address], "labels": merged})
    return groups


def write_targets(path: str | os.PathLike, targets: Iterable[Target]) -> Path:
    """Atomically write a file_sd JSON file listing ``targets``; returns the path.

    ``targets`` are ``(job, "host:port", labels)``; use the role as the job (``actor``, ``executor``,
    ``executor-broker``, ``learner``) and put ``id``/``rank`` in labels. Prometheus re-reads the file on change,
    so a launcher adding a process just calls this again with the longer list.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(target_groups(targets), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_targets(path: str | os.PathLike) -> list[Target]:
    """Inverse of :func:`write_targets` (for tests and ``rlef`` tools)."""
    groups = json.loads(Path(path).read_text())
    result: list[Target] = []
    for group in groups:
        labels = dict(group.get("labels", {}))
        job = labels.pop("job", "")
        for address in group["targets"]:
            result.append((job, address, labels))
    return result
