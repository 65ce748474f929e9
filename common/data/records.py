"""What every dataset loader shares: the :class:`LoadedDataset` it returns and the record reader of parquet and
jsonl(.gz) files."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlef.common.data.problems import Problem
from rlef.common.errors import DataError


@dataclass
class LoadedDataset:
    """Every problem of one split plus what was dropped and why."""

    dataset: str
    split: str
    source: str
    files: list[str]
    problems: list[Problem]
    dropped: Counter = field(default_factory=Counter)
    by_id: dict[str, Problem] = field(default_factory=dict)
    generated_read: bool = True


def read_records(file: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record index, record) of a parquet or jsonl(.gz) file, without the ``skip`` fields."""
    name = file.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
            index = 0
            columns = [n for n in pf.schema_arrow.names if n not in skip]
            for batch in pf.iter_batches(batch_size=64, columns=columns):
                for row in batch.to_pylist():
                    yield index, row
                    index += 1
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) / OSError
            raise DataError(f"{file}: unreadable parquet: {exc}") from exc
        return
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".json"):
        yield from jsonl_records(file, skip)
        return
    raise DataError(f"{file}: unsupported file type (expected .parquet, .jsonl or .jsonl.gz)")


def jsonl_records(file: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[int, Any]]:
    """(line index, decoded line) of a jsonl file (gzip-compressed when its name ends in .gz), blank lines
    skipped, without the ``skip`` fields. Raises DataError naming the file and line."""
    opener = gzip.open if file.name.endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8") as f:
            for index, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file}: record {index} (line {index + 1}): invalid JSON: {exc}") from exc
                if skip and isinstance(row, dict):
                    for key in skip:
                        row.pop(key, None)
                yield index, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: unreadable: {exc}") from exc
