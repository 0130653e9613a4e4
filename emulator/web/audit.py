"""The audit log: one JSON object a line for every login, console session, denial and action.

Fields: `time` (Unix seconds), `iso` (UTC), `event`, `user`, `vm`, `source` (address:port or
`ssh:address`), `via` (web, ssh), plus event-specific fields. Events: login_ok, login_failed,
login_rate_limited, logout, console_connect, console_disconnect, console_takeover, console_refused,
denied, action (power, sysrq, nmi; with `ok` and `error`), console_enabled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)

    def write(self, event: str, *, user: str | None, source: str | None, vm: str | None = None,
              via: str = "web", **fields: Any) -> dict[str, Any]:
        now = time.time()
        record = {"time": round(now, 6), "iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                  "event": event, "user": user, "vm": vm, "source": source, "via": via, **fields}
        self._file.write(json.dumps(record) + "\n")
        return record

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
