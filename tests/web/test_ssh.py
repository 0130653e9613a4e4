"""The SSH front end with a real asyncssh client: console, `~B` SysRq, escapes, roles, takeover, audit."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import asyncssh
import pytest

from .client import Client, Served, WsReader

pytestmark = [pytest.mark.guest]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def host_key(served: Served) -> asyncssh.SSHKey:
    return asyncssh.read_private_key(str(served.home / "serve" / "ssh_host_key")).convert_to_public()


async def connect(served: Served, username: str, password: str | None = None) -> asyncssh.SSHClientConnection:
    user = username.split("+")[0]
    return await asyncssh.connect(
        "127.0.0.1", served.info["ssh_port"], username=username,
        password=password if password is not None else served.passwords[user],
        known_hosts=([host_key(served)], [], []), client_keys=None, agent_path=None,
    )


class Reader:
    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self.process = process
        self.data = b""

    async def expect(self, needle: bytes, since: int = 0, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while (at := self.data.find(needle, since)) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen over SSH; got {self.data[-600:]!r}")
            try:
                chunk = await asyncio.wait_for(self.process.stdout.read(65536), remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"SSH session ended before {needle!r}; got {self.data[-600:]!r}")
            self.data += chunk
        return at + len(needle)

    async def drain(self, quiet: float = 0.5) -> None:
        while True:
            try:
                chunk = await asyncio.wait_for(self.process.stdout.read(65536), quiet)
            except TimeoutError:
                return
            if not chunk:
                return
            self.data += chunk

    async def shell(self) -> None:
        """Reach a root prompt: Enter until the guest shows `#` or `login:` (then log in)."""
        await self.drain()
        for _ in range(10):
            since = len(self.data)
            self.process.stdin.write(b"\r")
            await self.expect(b"\n", since)
            await self.drain()
            tail = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", self.data[since:]).rstrip()
            if tail.endswith(b"#"):
                return
            if tail.endswith(b"login:"):
                since = len(self.data)
                self.process.stdin.write(b"root\r")
                await self.expect(b"Password:", since)
                self.process.stdin.write(b"sercon\r")
                await self.expect(b"# ", since)
                await self.drain()
                return
        raise AssertionError(f"no shell prompt over SSH: {self.data[-300:]!r}")


def test_ssh_console_sysrq_and_escapes(served: Served) -> None:
    async def go() -> None:
        async with await connect(served, "bob+pool/1") as conn:
            process = await conn.create_process(term_type="xterm", encoding=None)
            r = Reader(process)
            await r.expect(b"serial console of pool/1")
            await r.shell()
            since = len(r.data)
            process.stdin.write(b"echo ssh-$((6*7))-ok\r")
            await r.expect(b"ssh-42-ok", since)
            # ~B then h at the start of a line: SysRq help from the kernel.
            since = len(r.data)
            process.stdin.write(b"\r~Bh")
            await r.expect(b"sysrq: HELP", since)
            # A BREAK request from the client (what OpenSSH's own ~B sends), then the key.
            since = len(r.data)
            process.channel.send_break(100)
            await asyncio.sleep(0.2)
            process.stdin.write(b"h")
            await r.expect(b"sysrq: HELP", since)
            since = len(r.data)
            process.stdin.write(b"~?")
            await r.expect(b"~B  then a key", since)
            # A ~ in the middle of a line is just a character; ~~ at the start of a line sends one ~.
            since = len(r.data)
            process.stdin.write(b"\recho a~b\r")
            await r.expect(b"a~b\r\n", since)
            since = len(r.data)
            process.stdin.write(b"\r~~=x; echo tilde-ok\r")
            await r.expect(b"tilde-ok\r\n", since)
            assert b"~=x; echo" in r.data[since:] and b"~~=x" not in r.data[since:]
            process.stdin.write(b"\r~.")
            result = await asyncio.wait_for(process.wait(), 30)
            assert result.exit_status == 0
    run(go())
    audit = [a for a in served.audit() if a.get("via") == "ssh" and a.get("vm") == "pool/1"]
    events = [a["event"] for a in audit]
    assert "console_connect" in events and "console_disconnect" in events
    sysrq = [a for a in audit if a["event"] == "action" and a["action"] == "sysrq"]
    assert len(sysrq) >= 2 and all(a["user"] == "bob" and a["ok"] for a in sysrq)
    assert any(a["event"] == "login_ok" and a["via"] == "ssh" and a["user"] == "bob" for a in served.audit())


def test_ssh_reader_and_strangers_are_refused(served: Served) -> None:
    async def refused(username: str) -> tuple[int | None, bytes]:
        conn = await connect(served, username)
        try:
            result = await conn.run(term_type="xterm", encoding=None, timeout=30)
        finally:
            conn.close()
        assert isinstance(result.stderr, bytes)
        return result.exit_status, result.stderr

    status, err = run(refused("carol+web1"))
    assert status == 1 and b"needs the contributor or owner role" in err
    status, err = run(refused("bob+web2"))
    assert status == 1 and b"no role on web2" in err
    status, err = run(refused("bob+nope"))
    assert status == 1 and b"no VM or scale-set instance named 'nope'" in err
    status, err = run(refused("bob"))
    assert status == 1 and b"say which VM" in err

    async def wrong_password() -> None:
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(served, "bob+web1", "not-bobs-password")
    run(wrong_password())
    audit = served.audit()
    assert any(a["event"] == "denied" and a["via"] == "ssh" and a["user"] == "carol" for a in audit)
    assert any(a["event"] == "login_failed" and a["via"] == "ssh" and a["user"] == "bob" for a in audit)


def test_ssh_takes_over_a_web_session(served: Served) -> None:
    """Same policy across front ends: bob on the web, then bob over SSH, on pool/0 (takeover)."""

    async def go() -> None:
        async with Client(served) as web:
            assert await web.login("bob") == 200
            first = WsReader(await web.ws("pool/0"))
            await first.frame("hello")
            async with await connect(served, "bob+pool/0") as conn:
                process = await conn.create_process(term_type="xterm", encoding=None)
                r = Reader(process)
                await r.expect(b"serial console of pool/0")
                closed = await first.frame("closed")
                assert closed["reason"] == "takeover"
                await r.shell()
                since = len(r.data)
                process.stdin.write(b"echo over-ssh\r")
                await r.expect(b"over-ssh\r\n", since)
                # And back: the web takes over; the SSH user is told and may press Enter to reconnect.
                second = WsReader(await web.ws("pool/0"))
                await second.frame("hello")
                await r.expect(b"took over the console")  # the owner's notice, as Azure words it
                at = await r.expect(b"To reconnect, press Enter (~. to quit)")  # the SSH front end's prompt
                process.stdin.write(b"\r")
                await r.expect(b"reconnected to the serial console of pool/0", at)
                assert (await second.frame("closed"))["reason"] == "takeover"
                process.stdin.write(b"\r~.")
                await asyncio.wait_for(process.wait(), 30)
    run(go())
