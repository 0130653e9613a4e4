"""The audit log: one JSON object a line for every login, console session, denial and action.

Fields: `time` (Unix seconds), `iso` (UTC), `event`, `user`, `vm`, `source` (address:port or
`ssh:address`), `via` (web, ssh), plus event-specific fields. Events: login_ok, login_failed,
login_rate_limited, logout, console_connect, console_disconnect, console_takeover, console_refused,
denied, action (power, sysrq, nmi; with `ok` and `error`), console_enabled.

The file is 0600 and rotates at `max_bytes` (audit.jsonl.1 ... .N, the oldest dropped). Refusals
that cost an attacker nothing (`login_rate_limited`, `denied`, `console_refused`) are throttled:
the first `burst` of a kind (event, user, address, VM, front end, permission) in a `throttle_s`
window are written, the others counted, and the next one written after the window says how many
were left out (`repeated`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

THROTTLED = frozenset({"login_rate_limited", "denied", "console_refused"})


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int = 16 * 1024 * 1024, keep: int = 5,
                 throttle_s: float = 60.0, burst: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.throttle_s = throttle_s
        self.burst = burst
        #: (event, user, address, vm, via, permission) -> (window start, written, left out)
        self._throttle: dict[tuple[Any, ...], tuple[float, int, int]] = {}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def _throttled(self, event: str, key: tuple[Any, ...], now: float) -> int | None:
        """None: leave this record out; else how many like it were left out before it."""
        if event not in THROTTLED:
            return 0
        start, written, skipped = self._throttle.get(key, (0.0, 0, 0))
        if now - start >= self.throttle_s:
            if len(self._throttle) > 10000:  # forget old windows; never grow without bound
                self._throttle = {k: v for k, v in self._throttle.items() if now - v[0] < self.throttle_s}
            self._throttle[key] = (now, 1, 0)
            return skipped
        if written < self.burst:
            self._throttle[key] = (start, written + 1, 0)
            return skipped
        self._throttle[key] = (start, written, skipped + 1)
        return None

    def write(self, event: str, *, user: str | None, source: str | None, vm: str | None = None,
              via: str = "web", **fields: Any) -> dict[str, Any] | None:
        now = time.time()
        address = (source or "").rsplit(":", 1)[0]
        key = (event, user, address, vm, via, fields.get("permission"), fields.get("reason"))
        repeated = self._throttled(event, key, now)
        if repeated is None:
            return None
        record = {"time": round(now, 6), "iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                  "event": event, "user": user, "vm": vm, "source": source, "via": via, **fields}
        if repeated:
            record["repeated"] = repeated
        self._file.write(json.dumps(record) + "\n")
        if self._file.tell() >= self.max_bytes:
            self._rotate()
        return record

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
