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
from typing import Protocol

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
    """A front end's input. `next()` waits for the next message and returns its items; the bridge
    awaits it directly, so a keystroke reaches the owner on the same wake-up that read it. It must
    be safe to cancel while it waits: the bridge cancels it to end (idle, expired, the owner's
    side closed), and a message not yet taken stays for the next bridge or the next reader."""

    async def next(self) -> list[Input]: ...


async def run_bridge(host: FleetHost, conn: ConsoleConnection, inputs: InputSource, *,
                     show: Callable[[bytes], Awaitable[None]], tell: Callable[[str], Awaitable[None]],
                     source: str, via: str, expires_at: float | None = None) -> tuple[str, int]:
    """Pump both ways until one side ends; returns (reason, serial-log offset reached)."""
    position = conn.start
    me = asyncio.current_task()
    assert me is not None
    loop = asyncio.get_running_loop()
    idle = host.fleet.idle_timeout
    expires = None if expires_at is None else time.monotonic() + (expires_at - time.time())
    last_input = time.monotonic()
    waiting = False  # awaiting inputs.next(): the one place an ending may cancel
    ending: list[str] = []  # why the bridge ends, set by the output pump or the timer

    timer: asyncio.TimerHandle | None = None

    def stop(reason: str) -> None:
        if not ending:
            ending.append(reason)
            if waiting:
                me.cancel()

    def check() -> None:
        """Idle and expiry, checked when due instead of with a timeout on every read."""
        nonlocal timer
        now = time.monotonic()
        if expires is not None and now >= expires:
            stop("expired")
        elif waiting and now - last_input >= idle:
            stop("idle")
        else:
            due = last_input + idle if waiting else max(last_input + idle, now + 0.5)
            timer = loop.call_later((due if expires is None else min(due, expires)) - now, check)

    async def out() -> None:
        nonlocal position
        async for data in conn.output():
            position += len(data)
            await show(data)

    def pump_ended(_: object) -> None:
        stop(conn.reason)

    pump = asyncio.create_task(out())
    pump.add_done_callback(pump_ended)
    timer = loop.call_later(0, check)
    try:
        while not ending:
            waiting = True
            try:
                items = await inputs.next()
            except asyncio.CancelledError:
                if not ending or me.uncancel() > 0:
                    raise  # cancelled from outside, not by stop()
                break
            finally:
                waiting = False
            for item in items:
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
        return ending[0], position
    except ConnectionError:
        return conn.ended_by_server or conn.ended_by_owner or "connection lost", position
    finally:
        ending.append("done")  # stop() is a no-op from here on
        if timer is not None:
            timer.cancel()
        pump.remove_done_callback(pump_ended)
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
