"""Passwords, sessions, CSRF tokens and login rate limiting for the web and SSH front ends.

Passwords are hashed with scrypt (`hashlib.scrypt`, standard library; N=2**15, r=8, p=1, about
32 MiB and ~100 ms a guess), stored as `scrypt$N$r$p$SALT$HASH` (base64). Sessions live in memory:
a restart of `sercon serve` logs everyone out. Each session has its own CSRF token, which every
state-changing request must echo in the `X-CSRF-Token` header.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
#: Failed logins allowed per (source address, user) within `RATE_WINDOW` seconds (4x that per address).
RATE_LIMIT = 5
RATE_WINDOW = 60.0
SESSION_LIFETIME = 12 * 3600.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; a missing or malformed hash never matches (but costs the same time)."""
    try:
        if not stored:
            raise ValueError("no hash")
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            raise ValueError(kind)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=SCRYPT_MAXMEM, dklen=len(expected))
        return hmac.compare_digest(got, expected)
    except (ValueError, TypeError):
        hashlib.scrypt(password.encode(), salt=b"0" * 16, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                       maxmem=SCRYPT_MAXMEM, dklen=32)
        return False


@dataclass
class Session:
    token: str
    user: str
    csrf: str
    source: str
    created: float = field(default_factory=time.time)

    def expired(self) -> bool:
        return time.time() - self.created > SESSION_LIFETIME


class Sessions:
    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}

    def create(self, user: str, source: str) -> Session:
        session = Session(token=secrets.token_urlsafe(32), user=user, csrf=secrets.token_urlsafe(32), source=source)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None or session.expired():
            self._by_token.pop(token or "", None)
            return None
        return session

    def drop(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(session.csrf.encode(), header.encode())


class RateLimiter:
    """Login attempts in a sliding window: per (address, user) pair, and per address.

    Every attempt counts from the moment it starts, before its password is hashed, so concurrent
    guesses cannot all slip in before the first failure is known; a successful login takes its
    own attempt back. A pair is blocked after `pair_limit` attempts, an address after
    `address_limit` (guessing many names); neither locks a user out for people at other addresses."""

    def __init__(self, pair_limit: int = RATE_LIMIT, address_limit: int = 4 * RATE_LIMIT,
                 window: float = RATE_WINDOW) -> None:
        self.pair_limit = pair_limit
        self.address_limit = address_limit
        self.window = window
        self._attempts: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = time.monotonic()
        queue = self._attempts.setdefault(key, deque())
        while queue and now - queue[0] > self.window:
            queue.popleft()
        if not queue:
            del self._attempts[key]  # keeps the table as small as the live window
            return self._attempts.setdefault(key, queue)
        return queue

    def _keys(self, address: str, user: str) -> list[tuple[str, int]]:
        return [(f"pair:{address}:{user}", self.pair_limit), (f"ip:{address}", self.address_limit)]

    def retry_after(self, address: str, user: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        wait = 0.0
        for key, limit in self._keys(address, user):
            queue = self._recent(key)
            if len(queue) >= limit:
                wait = max(wait, self.window - (time.monotonic() - queue[-limit]))
        return wait

    def begin(self, address: str, user: str) -> float | None:
        """Count an attempt now; returns None if it may go on, else the seconds to wait (not counted)."""
        wait = self.retry_after(address, user)
        if wait > 0:
            return wait
        stamp = time.monotonic()
        for key, _ in self._keys(address, user):
            self._recent(key).append(stamp)
        return None

    def succeeded(self, address: str, user: str) -> None:
        """A right password: forget this pair's attempts and take one attempt back from the address."""
        self._attempts.pop(f"pair:{address}:{user}", None)
        queue = self._attempts.get(f"ip:{address}")
        if queue:
            queue.pop()


class PasswordChecker:
    """Every password check of `sercon serve`, web and SSH alike: rate limited before hashing, at
    most `concurrency` scrypt runs at once (each is ~100 ms of CPU and 32 MiB), and audited."""

    def __init__(self, limiter: RateLimiter, concurrency: int = 2) -> None:
        self.limiter = limiter
        self._slots = asyncio.Semaphore(concurrency)
        #: How many scrypt checks ran (tests read it through the audit log's login_failed/login_ok).
        self.checks = 0

    async def check(self, password: str, stored: str | None, address: str, user: str) -> tuple[bool, float]:
        """(ok, retry_after): retry_after > 0 means refused by the limiter without hashing."""
        wait = self.limiter.begin(address, user)
        if wait is not None:
            return False, wait
        async with self._slots:
            self.checks += 1
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(None, verify_password, password, stored)
        if ok:
            self.limiter.succeeded(address, user)
        return ok, 0.0
