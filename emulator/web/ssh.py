"""The SSH front end: `ssh -p PORT USER+VM@HOST` (or `USER+SET/INDEX`) opens that VM's serial console.

Same users, roles, console switch, takeover policy and audit log as the web console (they share
one `FleetHost`). Password or public-key login (`ssh_keys` of the user in the fleet file).

Escapes, recognised at the start of a line as in OpenSSH (and as on AWS's serial console):
`~B` then a key sends SysRq (a BREAK then the key; a BREAK request from the SSH client, which is
what OpenSSH's own `~B` sends, works the same); `~.` disconnects; `~?` lists the escapes; `~~`
sends one `~`. After a takeover the session prints Azure's notice and reconnects on Enter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import asyncssh

from ..errors import SerconError
from .auth import verify_password
from .fleet import Vm
from .guests import TAKEOVER_MARK, ConsoleConnection, FleetHost
from .web import coalesced

HELP = (
    "\r\nSupported escape sequences (at the start of a line):\r\n"
    " ~B  then a key: send SysRq (for example ~B h for help); one ~B per key\r\n"
    " ~.  disconnect\r\n"
    " ~?  this help\r\n"
    " ~~  send a single ~\r\n"
)


#: How long input typed just before a SysRq gets to reach the guest before the BREAK is sent.
SYSRQ_SETTLE_S = 0.3


def ensure_host_key(path: Path) -> asyncssh.SSHKey:
    if path.is_file():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    path.chmod(0o600)
    return key


def split_username(username: str) -> tuple[str, str]:
    user, sep, vm = username.partition("+")
    return user, vm if sep else ""


BREAK = b"<break>"
log = logging.getLogger("sercon.ssh")


class _Input:
    """A session's keystrokes (from `SshFrontEnd.read_input`), with at most one pending get."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pending: asyncio.Future[bytes | None] | None = None

    def future(self) -> asyncio.Future[bytes | None]:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.queue.get())
        return self._pending

    def take(self) -> bytes | None:
        assert self._pending is not None and self._pending.done()
        result, self._pending = self._pending.result(), None
        return result

    async def get(self) -> bytes | None:
        await self.future()
        return self.take()


class _Server(asyncssh.SSHServer):
    def __init__(self, front: SshFrontEnd) -> None:
        self.front = front
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = "unknown"
        self.user = ""
        self.password_used = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.source = f"{peer[0]}:{peer[1]}" if peer else "unknown"

    def begin_auth(self, username: str) -> bool:
        user, _ = split_username(username)
        self.user = user
        account = self.front.host.fleet.users.get(user)
        if account and account.ssh_keys and self.conn is not None:
            try:
                self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(account.ssh_keys)))
            except (ValueError, asyncssh.KeyImportError):
                pass
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        user, _ = split_username(username)
        audit = self.front.host.audit
        address = self.source.rsplit(":", 1)[0]
        if self.front.limiter.retry_after(address, user) > 0:
            audit.write("login_rate_limited", user=user, source=self.source, via="ssh")
            return False
        account = self.front.host.fleet.users.get(user)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, verify_password, password, account.password_hash if account else None)
        if ok:
            self.password_used = True
            self.front.limiter.succeeded(address, user)
            audit.write("login_ok", user=user, source=self.source, via="ssh", method="password")
        else:
            self.front.limiter.failed(address, user)
            audit.write("login_failed", user=user, source=self.source, via="ssh", method="password")
        return ok

    def auth_completed(self) -> None:
        if not self.password_used:
            self.front.host.audit.write("login_ok", user=self.user, source=self.source, via="ssh", method="publickey")


class SshFrontEnd:
    def __init__(self, host: FleetHost) -> None:
        self.host = host
        self.limiter = host.limiter

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        username = process.get_extra_info("username") or ""
        peer = process.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        user, vm_name = split_username(username)
        host = self.host
        try:
            if not vm_name:
                raise SerconError(f"say which VM: ssh -p PORT {user}+VM@HOST (or {user}+SET/INDEX)")
            vm = host.authorize(user, vm_name, "console", source, "ssh")
            host.check_console_enabled(vm, user, source, "ssh")
        except SerconError as exc:
            process.stderr.write(f"sercon: {exc}\r\n".encode())
            process.exit(1)
            return
        process.stdout.write(f"[sercon] serial console of {vm.name} (~? lists escapes)\r\n".encode())
        from_offset: int | None = -4096
        inp = _Input()
        reader_task = asyncio.create_task(self.read_input(process, inp.queue))
        try:
            await self.sessions(process, vm, user, source, inp, from_offset)
        except (asyncssh.Error, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("SSH session of %s on %s failed", user, vm.name)
            process.stderr.write(b"\r\nsercon: internal error in the SSH front end (see the serve log)\r\n")
            process.exit(1)
        finally:
            reader_task.cancel()

    async def sessions(self, process: asyncssh.SSHServerProcess[bytes], vm: Vm, user: str, source: str,
                       inp: _Input, from_offset: int | None) -> None:
        host = self.host
        while True:
            try:
                conn = await host.open_console(vm, "interactive", user, source, "ssh", from_offset)
            except SerconError as exc:
                process.stderr.write(f"sercon: {exc}\r\n".encode())
                process.exit(1)
                return
            reason, position = await self.bridge(process, inp, conn, user, source)
            host.console_closed(conn, user, source, "ssh", reason)
            if reason in ("quit", "eof"):
                process.exit(0)
                return
            if reason in ("takeover", "idle"):
                process.stdout.write(b"\r\n[sercon] The serial console connection was closed"
                                     + (b" after a long time without input" if reason == "idle" else b"")
                                     + b". To reconnect, press Enter (~. to quit).\r\n")
                if not await self.wait_for_enter(inp):
                    process.exit(0)
                    return
                from_offset = position
                process.stdout.write(f"[sercon] reconnected to the serial console of {vm.name}\r\n".encode())
                continue
            process.stdout.write(f"\r\n[sercon] console closed ({reason})\r\n".encode())
            process.exit(0)
            return

    @staticmethod
    async def read_input(process: asyncssh.SSHServerProcess[bytes], queue: asyncio.Queue[bytes | None]) -> None:
        """The one reader of the session's stdin: chunks, BREAK (as `BREAK`), None at the end.

        Nothing else reads stdin or cancels a read, so no keystroke is lost between sessions."""
        while True:
            try:
                data = await process.stdin.read(4096)
            except asyncssh.BreakReceived:
                await queue.put(BREAK)
                continue
            except (asyncssh.TerminalSizeChanged, asyncssh.SignalReceived):
                continue
            except (asyncssh.Error, ConnectionError):
                data = b""
            if not data:
                await queue.put(None)
                return
            await queue.put(data)

    async def wait_for_enter(self, inp: _Input) -> bool:
        while True:
            data = await inp.get()
            if data is BREAK:
                continue
            if not data or b"~." in data:
                return False
            if b"\r" in data or b"\n" in data:
                return True

    async def bridge(self, process: asyncssh.SSHServerProcess[bytes], inp: _Input,
                     conn: ConsoleConnection, user: str, source: str) -> tuple[str, int]:
        """Pump both ways until one side ends; returns (reason, serial-log offset reached)."""
        position = conn.start
        state = {"reason": ""}

        async def out() -> None:
            nonlocal position
            tail = b""
            async for data in coalesced(conn.reader):
                tail = (tail + data)[-512:]
                position += len(data)
                process.stdout.write(data)
                await process.stdout.drain()
            state["reason"] = conn.ended_by_server or ("takeover" if TAKEOVER_MARK in tail else "guest")

        pump = asyncio.create_task(out())
        at_line_start = True
        pending_tilde = False
        pending_break = False
        idle = self.host.fleet.idle_timeout
        last_input = time.monotonic()
        try:
            while True:
                remaining = idle - (time.monotonic() - last_input)
                read = inp.future()
                waitables: set[asyncio.Future[Any]] = {read, pump}
                done, _ = await asyncio.wait(waitables, timeout=max(0.0, remaining),
                                             return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    # Keep the pending get for the next bridge / wait_for_enter: no input is lost.
                    return (state["reason"] if pump in done else "idle"), position
                data = inp.take()
                if data is BREAK:
                    pending_break = True
                    last_input = time.monotonic()
                    continue
                if not data:
                    return "eof", position
                last_input = time.monotonic()
                send = bytearray()
                for byte in data:
                    ch = bytes([byte])
                    if pending_break:
                        pending_break = False
                        await self.flush(conn, send)
                        send.clear()
                        await self.sysrq(process, conn, user, source, ch.decode("latin-1"))
                        continue
                    if pending_tilde:
                        pending_tilde = False
                        if ch in (b"B", b"b"):
                            pending_break = True
                            continue
                        if ch == b".":
                            await self.flush(conn, send)
                            return "quit", position
                        if ch == b"?":
                            process.stdout.write(HELP.encode())
                            continue
                        if ch == b"~":
                            send += b"~"
                            at_line_start = False
                            continue
                        send += b"~" + ch
                        at_line_start = ch in (b"\r", b"\n")
                        continue
                    if ch == b"~" and at_line_start:
                        pending_tilde = True
                        continue
                    send += ch
                    at_line_start = ch in (b"\r", b"\n")
                await self.flush(conn, send)
        finally:
            pump.cancel()

    @staticmethod
    async def flush(conn: ConsoleConnection, data: bytes | bytearray) -> None:
        if data:
            conn.writer.write(bytes(data))
            await conn.writer.drain()
            conn.last_input = time.monotonic()

    async def sysrq(self, process: asyncssh.SSHServerProcess[bytes], conn: ConsoleConnection, user: str,
                    source: str, key: str) -> None:
        # A BREAK overtakes keystrokes still on their way to the UART, and the kernel would take the
        # first of those as the SysRq key: let just-typed input (the Enter before ~B) land first.
        settle = SYSRQ_SETTLE_S - (time.monotonic() - conn.last_input)
        if settle > 0:
            await asyncio.sleep(settle)
        try:
            await self.host.action(user, conn.vm.name, "sysrq", source, "ssh", {"keys": key})
        except SerconError as exc:
            process.stdout.write(f"\r\n[sercon] SysRq {key!r}: {exc}\r\n".encode())


async def start_ssh(host: FleetHost, address: str, port: int, host_key_path: Path) -> tuple[Any, int]:
    """Start the SSH server; returns (server, bound port)."""
    front = SshFrontEnd(host)
    key = ensure_host_key(host_key_path)
    server = await asyncssh.create_server(
        lambda: _Server(front), address, port, server_host_keys=[key], process_factory=front.handle,
        encoding=None, line_editor=False, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
        keepalive_interval=30, login_timeout=60,
    )
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return server, bound
