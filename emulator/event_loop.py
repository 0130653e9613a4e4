"""The one way sercon's long-running processes run their event loop.

An owner, a standby owner and `sercon serve` all run on uvloop's loop unless `SERCON_UVLOOP=0`
asks for asyncio's own. Every keystroke wakes the owner twice (the client's bytes to QEMU, the
echo back to the client and the log) and the gateway twice more, and uvloop's loop and
transports cost less per wake-up. `sercon info` says which loop an owner runs (`event_loop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import settings

T = TypeVar("T")


def uvloop_wanted() -> bool:
    return settings.switch("SERCON_UVLOOP")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop's loop (or asyncio's own with SERCON_UVLOOP=0)."""
    if uvloop_wanted():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """Which loop runs the calling code: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
