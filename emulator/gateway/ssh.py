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
from pathlib import Path
from typing import Any

import asyncssh

from ..errors import SerconError
from ..ssh_escape import HELP, Help, Quit, Send, SshEscapeParser, SysRq
from .bridge import End, Input, Keepalive, SysRqKey, ToGuest, ToUser, run_bridge
from .fleet_host import FleetHost

#: Key exchange, ciphers, MACs and signatures offered, chosen explicitly: nothing with SHA-1, no CBC.
KEX_ALGS = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384", "ecdh-sha2-nistp521", "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512", "diffie-hellman-group14-sha256"]
# No chacha20-poly1305: asyncssh builds it from several cryptography calls per packet, and a
# keystroke's echo took 0.48 ms longer with it than with AES-GCM (asyncssh client) and 0.22 ms
# longer than with AES-CTR (OpenSSH's client, which lists CTR before GCM). It is also the cipher the
# Terrapin attack targets. Every OpenSSH since 6.2 and PuTTY since 0.76 speak AES-GCM.
ENCRYPTION_ALGS = ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512"]
SIGNATURE_ALGS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "rsa-sha2-512", "rsa-sha2-256", "sk-ssh-ed25519@openssh.com",
                  "sk-ecdsa-sha2-nistp256@openssh.com"]


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
        account = self.front.host.fleet.users.get(user)
        ok, wait = await self.front.host.passwords.check(password, account.password_hash if account else None,
                                                         address, user)
        if wait > 0:
            audit.write("login_rate_limited", user=user, source=self.source, via="ssh")
        elif ok:
            self.password_used = True
            audit.write("login_ok", user=user, source=self.source, via="ssh", method="password")
        else:
            audit.write("login_failed", user=user, source=self.source, via="ssh", method="password")
        return ok

    def auth_completed(self) -> None:
        if not self.password_used:
            self.front.host.audit.write("login_ok", user=self.user, source=self.source, via="ssh", method="publickey")


class _SshInput:
    """The session's keystrokes as bridge items, through the `~` escape parser (state kept across
    console sessions, like the one queue of what stdin read)."""

    def __init__(self, raw: asyncio.Queue[bytes | None]) -> None:
        self.raw = raw
        self.parser = SshEscapeParser()

    async def next(self) -> list[Input]:
        data = await self.raw.get()  # a cancelled get() leaves the chunk in the queue
        if data is BREAK:
            self.parser.brk()
            return [Keepalive()]
        if not data:
            return [End("eof")]
        items: list[Input] = []
        for action in self.parser.feed(data):
            if isinstance(action, Send):
                items.append(ToGuest(action.data))
            elif isinstance(action, SysRq):
                items.append(SysRqKey(action.key))
            elif isinstance(action, Help):
                items.append(ToUser(HELP))
            elif isinstance(action, Quit):
                items.append(End("quit"))
                break
        return items


class SshFrontEnd:
    def __init__(self, host: FleetHost) -> None:
        self.host = host

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
        raw: asyncio.Queue[bytes | None] = asyncio.Queue()
        reader_task = asyncio.create_task(self.read_input(process, raw))
        try:
            await self.sessions(process, vm.name, user, source, _SshInput(raw), -4096)
        except (asyncssh.Error, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("SSH session of %s on %s failed", user, vm.name)
            process.stderr.write(b"\r\nsercon: internal error in the SSH front end (see the serve log)\r\n")
            process.exit(1)
        finally:
            reader_task.cancel()

    async def sessions(self, process: asyncssh.SSHServerProcess[bytes], vm_name: str, user: str, source: str,
                       inp: _SshInput, from_offset: int | None) -> None:
        host = self.host

        async def show(data: bytes) -> None:
            process.stdout.write(data)
            await process.stdout.drain()

        async def tell(text: str) -> None:
            process.stdout.write(text.encode() if text.startswith("\r\n") else f"\r\n[sercon] {text}\r\n".encode())

        reconnect = False
        while True:
            try:
                # Authorized and checked against the console switch on every (re)connect.
                conn = await host.open_console(vm_name, "interactive", user, source, "ssh", from_offset)
            except SerconError as exc:
                process.stderr.write(f"\r\nsercon: {exc}\r\n".encode())
                process.exit(1)
                return
            if reconnect:
                process.stdout.write(f"[sercon] reconnected to the serial console of {vm_name}\r\n".encode())
            inp.parser.reset()
            reason, position = await run_bridge(host, conn, inp, show=show, tell=tell, source=source, via="ssh")
            host.console_closed(conn, user, source, "ssh", reason)
            if reason in ("quit", "eof"):
                process.exit(0)
                return
            if reason in ("takeover", "idle"):
                process.stdout.write(b"\r\n[sercon] The serial console connection was closed"
                                     + (b": another user took over the console" if reason == "takeover" else
                                        b" after a long time without input")
                                     + b". To reconnect, press Enter (~. to quit).\r\n")
                if not await self.wait_for_enter(inp.raw):
                    process.exit(0)
                    return
                from_offset, reconnect = position, True
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

    @staticmethod
    async def wait_for_enter(inp: asyncio.Queue[bytes | None]) -> bool:
        while True:
            data = await inp.get()
            if data is BREAK:
                continue
            if not data or b"~." in data:
                return False
            if b"\r" in data or b"\n" in data:
                return True


async def start_ssh(host: FleetHost, address: str, port: int, host_key_path: Path) -> tuple[Any, int]:
    """Start the SSH server; returns (server, bound port)."""
    front = SshFrontEnd(host)
    key = ensure_host_key(host_key_path)
    server = await asyncssh.create_server(
        lambda: _Server(front), address, port, server_host_keys=[key], process_factory=front.handle,
        encoding=None, line_editor=False, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
        keepalive_interval=30, login_timeout=60, kex_algs=KEX_ALGS, encryption_algs=ENCRYPTION_ALGS,
        mac_algs=MAC_ALGS, signature_algs=SIGNATURE_ALGS, compression_algs=["none"],
    )
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return server, bound
