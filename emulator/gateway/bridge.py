"""The one console bridge of the gateway, shared by the web and SSH front ends.

A front end turns what its user sends into `Input` items (keystrokes, a SysRq key, text for the
user, the end of the session, a keepalive) and gives the bridge a way to show output; the bridge
pumps guest output to the user and items to the guest until one side ends, and says why:
the owner's `closed` event (takeover, stopped, dropped), the gateway's own reason (disabled,
logout, expired), `idle` (no input for the fleet's idle_timeout; keepalives are not input), or
the front end's `End`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import SerconError
from .fleet_host import ConsoleConnection, FleetHost

#: How long input typed just before a SysRq gets to reach the guest before the BREAK is sent.
SYSRQ_SETTLE_S = 0.3


@dataclass(frozen=True)
class ToGuest:
    data: bytes


@dataclass(frozen=True)
class ToUser:
    text: str


@dataclass(frozen=True)
class SysRqKey:
    key: str


@dataclass(frozen=True)
class End:
    reason: str


@dataclass(frozen=True)
class Keepalive:
    """The client is alive (a websocket ping): not input, so it does not hold off the idle timeout."""


Input = ToGuest | ToUser | SysRqKey | End | Keepalive


class InputSource(Protocol):
    """A front end's input: `future()` is the pending read (kept across bridges, so no keystroke is
    lost between two console sessions); `take()` turns its result into items."""

    def future(self) -> asyncio.Future[Any]: ...

    def take(self) -> list[Input]: ...


async def run_bridge(host: FleetHost, conn: ConsoleConnection, inputs: InputSource, *,
                     show: Callable[[bytes], Awaitable[None]], tell: Callable[[str], Awaitable[None]],
                     source: str, via: str, expires_at: float | None = None) -> tuple[str, int]:
    """Pump both ways until one side ends; returns (reason, serial-log offset reached)."""
    position = conn.start

    async def out() -> None:
        nonlocal position
        async for data in conn.output():
            position += len(data)
            await show(data)

    pump = asyncio.create_task(out())
    idle = host.fleet.idle_timeout
    last_input = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            remaining = idle - (now - last_input)
            if expires_at is not None:
                remaining = min(remaining, expires_at - time.time())
            read = inputs.future()
            done, _ = await asyncio.wait({read, pump}, timeout=max(0.0, remaining),
                                         return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                # The pending read stays for the next bridge: no input is lost.
                if pump in done:
                    return conn.reason, position
                if expires_at is not None and time.time() >= expires_at:
                    return "expired", position
                return "idle", position
            for item in inputs.take():
                if isinstance(item, Keepalive):
                    continue
                last_input = time.monotonic()
                if isinstance(item, End):
                    return item.reason, position
                if isinstance(item, ToUser):
                    await tell(item.text)
                elif isinstance(item, ToGuest):
                    if conn.mode == "read":
                        await tell("this is a read-only session; nothing was sent")
                        continue
                    if item.data:
                        conn.writer.write(item.data)
                        await conn.writer.drain()
                        conn.last_input = time.monotonic()
                elif isinstance(item, SysRqKey):
                    await sysrq(host, conn, item.key, source, via, tell)
            if pump.done():
                return conn.reason, position
    except ConnectionError:
        return conn.ended_by_server or conn.ended_by_owner or "connection lost", position
    finally:
        pump.cancel()


async def sysrq(host: FleetHost, conn: ConsoleConnection, key: str, source: str, via: str,
                tell: Callable[[str], Awaitable[None]]) -> None:
    # A BREAK overtakes keystrokes still on their way to the UART, and the kernel would take the
    # first of those as the SysRq key: let just-typed input (the Enter before ~B) land first.
    settle = SYSRQ_SETTLE_S - (time.monotonic() - conn.last_input)
    if settle > 0:
        await asyncio.sleep(settle)
    try:
        await host.action(conn.user, conn.vm.name, "sysrq", source, via, {"keys": key})
    except SerconError as exc:
        await tell(f"SysRq {key!r}: {exc}")
