"""Test clients of `sercon serve`: real TLS (trusting only the server's certificate), HTTP, websockets."""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Served:
    home: Path
    info: dict[str, Any]
    passwords: dict[str, str]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.info['port']}"

    @property
    def cert(self) -> Path:
        return Path(self.info["cert"])

    def ssl_context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        for attr, value in versions.items():
            setattr(ctx, attr, value)
        return ctx

    def audit(self) -> list[dict[str, Any]]:
        path = Path(self.info["audit_log"])
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def guest_folder(self, vm: str) -> Path:
        return self.home / "guests" / vm.replace("/", "-")

    def log_bytes(self, vm: str) -> bytes:
        return (self.guest_folder(vm) / "serial.log").read_bytes()

    def wait_log(self, vm: str, needle: bytes, since: int = 0, timeout: float = 120) -> int:
        """Offset just after `needle` in the guest's serial log at or after `since`; raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.log_bytes(vm) if (self.guest_folder(vm) / "serial.log").exists() else b""
            at = data.find(needle, since)
            if at >= 0:
                return at + len(needle)
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the serial log of {vm} within {timeout}s; tail:\n"
                                     f"{data[-1500:].decode(errors='replace')}")
            time.sleep(0.1)


class Client:
    """One logged-in (or not) HTTPS client with its own cookie jar."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.csrf: str | None = None
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=served.ssl_context()),
                                             cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def login(self, user: str, password: str | None = None) -> int:
        async with self.session.post(self.served.base + "/api/login",
                                     json={"user": user, "password": password or self.served.passwords[user]}) as r:
            body = await r.json()
            if r.status == 200:
                self.csrf = body["csrf"]
            return r.status

    async def call(self, method: str, path: str, body: Any = None, csrf: bool = True,
                   raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if csrf and self.csrf:
            hdrs["X-CSRF-Token"] = self.csrf
        kwargs: dict[str, Any] = {"headers": hdrs}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.served.base + path, **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.read()

    async def ws(self, vm: str, mode: str = "interactive",
                 from_offset: int | None = None) -> aiohttp.ClientWebSocketResponse:
        q = f"?mode={mode}" + (f"&from={from_offset}" if from_offset is not None else "")
        return await self.session.ws_connect(self.served.base + f"/ws/vms/{vm}/console{q}", max_msg_size=0)


class WsReader:
    """Collects a console websocket's output; `expect` waits for text."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data = b""
        self.frames: list[dict[str, Any]] = []
        self.closed = False

    async def drain(self, quiet: float = 0.5) -> None:
        """Read until the console has been quiet for `quiet` seconds (or closed)."""
        while not self.closed:
            try:
                await self.pump_once(quiet)
            except TimeoutError:
                return

    async def pump_once(self, timeout: float) -> None:
        # At most 10 s per receive: aiohttp (3.14) starts a receive's timeout again after each ping
        # it answers, and the server pings every 30 s (heartbeat), so a longer timeout never fires
        # on a silent console. The callers loop until their own deadline.
        msg = await self.ws.receive(timeout=min(timeout, 10.0))
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.data += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            self.frames.append(json.loads(msg.data))
        else:
            self.closed = True

    async def expect(self, needle: bytes, timeout: float = 60, since: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            at = self.data.find(needle, since)
            if at >= 0:
                return at + len(needle)
            if self.closed:
                raise AssertionError(f"websocket closed before {needle!r}; got {self.data[-800:]!r} {self.frames}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout}s; got {self.data[-800:]!r} {self.frames}")
            try:
                await self.pump_once(remaining)
            except TimeoutError:
                continue

    async def frame(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for f in self.frames:
                if f.get("type") == kind:
                    self.frames.remove(f)
                    return f
            if self.closed:
                raise AssertionError(f"websocket closed before a {kind!r} frame; frames {self.frames}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} frame within {timeout}s; frames {self.frames}")
            try:
                await self.pump_once(remaining)
            except TimeoutError:
                continue

    async def until_closed(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("websocket still open")
            try:
                await self.pump_once(remaining)
            except TimeoutError:
                continue
