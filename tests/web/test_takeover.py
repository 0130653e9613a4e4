"""One interactive session per VM: takeover (Azure) on web1, reject (AWS) on web2; read-only viewers.

The guest's logged-in shell survives a takeover: a shell variable set by the first user is seen
by the second.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import pytest

from .client import Client, Served, WsReader

pytestmark = [pytest.mark.guest]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def shell(reader: WsReader) -> None:
    """Reach a root prompt on the guest: Enter until it shows `#` or `login:` (then log in)."""
    await reader.drain()
    for _ in range(10):
        since = len(reader.data)
        await reader.ws.send_json({"type": "input", "data": "\r"})
        await reader.expect(b"\n", since=since)
        await reader.drain()
        tail = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", reader.data[since:]).rstrip()
        if tail.endswith(b"#"):
            return
        if tail.endswith(b"login:"):
            since = len(reader.data)
            await reader.ws.send_json({"type": "input", "data": "root\r"})
            await reader.expect(b"Password:", since=since)
            await reader.ws.send_json({"type": "input", "data": "sercon\r"})
            await reader.expect(b"# ", since=since)
            await reader.drain()
            return
    raise AssertionError(f"no shell prompt: {reader.data[-300:]!r}")


async def run_cmd(reader: WsReader, command: str, expect: bytes) -> None:
    since = len(reader.data)
    await reader.ws.send_json({"type": "input", "data": command + "\r"})
    await reader.expect(expect, since=since)


def test_takeover_keeps_the_guest_shell(served: Served) -> None:
    mark = secrets.token_hex(4)

    async def go() -> None:
        async with Client(served) as bob, Client(served) as alice:
            assert await bob.login("bob") == 200 and await alice.login("alice") == 200
            first = WsReader(await bob.ws("web1"))
            hello = await first.frame("hello")
            assert hello["mode"] == "interactive"
            await shell(first)
            await run_cmd(first, f"export MARK={mark}; echo set-$MARK", f"set-{mark}".encode())
            second = WsReader(await alice.ws("web1"))
            hello2 = await second.frame("hello")
            assert hello2["took_over"].startswith("web:bob@")
            # The first client is told, as Azure does, and its websocket closes. The news comes as a
            # protocol event (a `closed` frame), never as text among the guest's bytes.
            closed = await first.frame("closed")
            assert closed["reason"] == "takeover" and "press Enter" in closed["message"]
            assert b"took over the console" not in first.data
            await first.until_closed()
            # The guest's shell carries on for the new user.
            await run_cmd(second, "echo got-$MARK", f"got-{mark}".encode())
            await second.ws.close()
    run(go())
    audit = [a for a in served.audit() if a.get("vm") == "web1" and a["event"] == "console_takeover"]
    assert audit and audit[-1]["user"] == "alice" and audit[-1]["previous"].startswith("web:bob@")


def test_reject_policy_refuses_the_second_session_but_allows_viewers(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as one, Client(served) as two:
            assert await one.login("alice") == 200 and await two.login("alice") == 200
            holder = WsReader(await one.ws("web2"))
            await holder.frame("hello")
            refused = WsReader(await two.ws("web2"))
            error = await refused.frame("error")
            assert error["status"] == 409 and error["code"] == "console_busy" and "policy is reject" in error["message"]
            await refused.until_closed()
            # A read-only viewer may watch; its keystrokes are refused.
            viewer = WsReader(await two.ws("web2", "read"))
            await viewer.frame("hello")
            await viewer.ws.send_json({"type": "input", "data": "echo nope\r"})
            assert (await viewer.frame("error"))["code"] == "read_only"
            token = secrets.token_hex(4)
            await shell(holder)
            await run_cmd(holder, f"echo seen-{token}", f"seen-{token}".encode())
            await viewer.expect(f"seen-{token}".encode())
            assert b"echo nope" not in served.log_bytes("web2")
            for r in (holder, viewer):
                await r.ws.close()
    run(go())
    refused = [a for a in served.audit() if a.get("vm") == "web2" and a["event"] == "console_refused"]
    assert refused and refused[-1]["user"] == "alice"
