"""The guest's serial log: every byte COM1 sent, from power-on, plus an index of boots and events.

`serial.log` holds exactly the guest's bytes, nothing inserted, so byte offsets mean the same thing
in every tool (as GCP's `get-serial-port-output --start`). What happened when (boots, resets,
power cycles, panics, NMIs, SysRq, QEMU exits) goes to `events.jsonl`, one JSON object a line,
each with the log offset at which it happened; `sercon log` merges the two for people.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LogChunk:
    start: int  # offset of data[0] in the log
    data: bytes
    size: int  # log size when read


class SerialLog:
    """Append-only byte log with offset reads. Written only by the guest's owner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab", buffering=0)
        self.size = self._fh.tell()

    def append(self, data: bytes) -> None:
        # Unbuffered: a reader in another process (sercon log --follow) sees bytes at once,
        # and an owner killed with SIGKILL loses nothing it had received.
        self._fh.write(data)
        self.size += len(data)

    def close(self) -> None:
        self._fh.close()

    @staticmethod
    def read(path: Path, start: int = 0, length: int | None = None) -> LogChunk:
        return read_log(path, start, length)


def read_log(path: Path, start: int = 0, length: int | None = None) -> LogChunk:
    """Bytes from `start` (negative: counted back from the end), at most `length` of them."""
    size = path.stat().st_size if path.exists() else 0
    if start < 0:
        start = max(0, size + start)
    start = min(start, size)
    count = size - start if length is None else max(0, min(length, size - start))
    if count == 0:
        return LogChunk(start, b"", size)
    with path.open("rb") as fh:
        fh.seek(start)
        return LogChunk(start, fh.read(count), size)


def tail_lines(path: Path, lines: int = 15, max_bytes: int = 8192) -> str:
    """The last console lines, cleaned of carriage returns and escape noise, for error messages."""
    chunk = read_log(path, -max_bytes)
    text = chunk.data.decode("utf-8", errors="replace").replace("\r", "")
    text = text.replace("\x1b[6n", "")
    return "\n".join(text.splitlines()[-lines:])


class EventLog:
    """events.jsonl: what happened to the guest, with the serial log offset at that moment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, offset: int, **fields: Any) -> dict[str, Any]:
        record = {"time": time.time(), "event": event, "offset": offset, **fields}
        line = json.dumps(record) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return record

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
        return records
