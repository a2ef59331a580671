"""The durable prediction log (format in docs/CONTRACTS.md), written by the transformer.

Append-only JSON Lines, ``predictions-YYYYMMDDHH.jsonl`` rotated by hour and, past ``max_bytes``, to
``predictions-YYYYMMDDHH-N.jsonl``. Each request's lines go out in one ``write(2)`` on an
``O_APPEND`` descriptor: lines are never interleaved or half-written between the stable and the canary
transformer, and a crashed process loses at most the request in flight (the data is in the OS, not
in a Python buffer).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Protocol

import orjson

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
LOG_FILE = re.compile(r"^predictions-(\d{10})(?:-(\d+))?\.jsonl$")


class PredictionSink(Protocol):
    """Where the transformer writes its prediction records (one call per request). Local files
    here; another destination (e.g. an HTTP payload-logger sink) only has to offer these two."""

    def append(self, records: Iterable[Mapping]) -> None: ...

    def close(self) -> None: ...


class PredictionLog:
    """The local files destination of :class:`PredictionSink`."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._hour: str | None = None
        self.directory.mkdir(parents=True, exist_ok=True)

    def append(self, records: Iterable[Mapping]) -> None:
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        if data:
            os.write(self._descriptor(), data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _descriptor(self) -> int:
        hour = datetime.now(timezone.utc).strftime("%Y%m%d%H")
        if self._fd is not None and (hour != self._hour or os.fstat(self._fd).st_size >= self.max_bytes):
            self.close()
        if self._fd is None:
            self._fd = os.open(self._current_path(hour), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._hour = hour
        return self._fd

    def _current_path(self, hour: str) -> Path:
        """The hour's newest file, or the next ``-N`` file once the newest is full."""
        index = 0
        while True:
            path = self.directory / (f"predictions-{hour}.jsonl" if index == 0
                                     else f"predictions-{hour}-{index}.jsonl")
            if not path.exists() or path.stat().st_size < self.max_bytes:
                return path
            index += 1


def log_files(directory: Path) -> list[tuple[Path, datetime]]:
    """The log files in write order (hour, then part), each with the UTC hour it covers."""
    directory = Path(directory)
    found = []
    for path in directory.glob("predictions-*.jsonl") if directory.is_dir() else []:
        match = LOG_FILE.match(path.name)
        if match:
            found.append((match.group(1), int(match.group(2) or 0), path))
    return [(path, datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=timezone.utc))
            for hour, _, path in sorted(found)]


def read_prediction_log(directory: Path) -> list[dict]:
    """Every record in file order (hour, then part); a torn last line is skipped."""
    records = []
    for path, _ in log_files(directory):
        for line in path.read_bytes().splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return records
