"""Speed of the network front ends (`sercon serve`), each against a raw baseline measured in the same run.

- throughput: a burst of guest output (`yes ... | head -c N`) timed from the command to its end
  marker, through the browser-side websocket client vs a bare QEMU's own serial socket (same
  image, same command; goal: web >= 90% of raw). The owner reads COM1 from QEMU's `pipe`
  chardev (in a burst, only every 5 ms: emulator/pacing.py). A bare QEMU on the
  same FIFOs, read as bytes arrive, is reported beside the socket. The owner's console socket, read at the
  same time as the websocket, is reported too.
- echo latency: one keystroke to its echo at a shell prompt, through the websocket and through
  SSH vs the bare QEMU socket (medians and 95th percentiles).
- viewers: the same burst for the writer with 0 and with 20 read-only websocket viewers of the
  same VM (goal: the writer does not slow down; every viewer gets the whole burst). Its rounds are
  SERCON_BENCH_VIEWER_RUNS (default SERCON_BENCH_RUNS): a burst varies by some 15% from one to the
  next under TCG, so a 5% goal needs a few dozen pairs.

Call `run_all()` (starts its own one-VM fleet and a bare QEMU, returns a dict), or the pieces
with a `WebBench` from `start_bench()`. `python tests/bench/bench_web.py` prints the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import pty
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Row, abba, environment  # noqa: E402

from emulator import resolve_image  # noqa: E402
from emulator.accel import choose_accel  # noqa: E402
from emulator.gateway import ssh as gateway_ssh  # noqa: E402
from emulator.gateway.auth import hash_password  # noqa: E402
from emulator.protocol import make_hello  # noqa: E402
from emulator.qemu_args import SERIAL_ID, find_qemu, qemu_args  # noqa: E402
from emulator.ssh_loopback import loopback_sshd  # noqa: E402

BURST_BYTES = int(os.environ.get("SERCON_BENCH_BURST", "400000"))
ECHO_KEYS = int(os.environ.get("SERCON_BENCH_ECHO_KEYS", "200"))
RUNS = int(os.environ.get("SERCON_BENCH_RUNS", "5"))
VIEWER_RUNS = int(os.environ.get("SERCON_BENCH_VIEWER_RUNS", str(RUNS)))
VIEWERS = 20
PASSWORD = "bench-password-" + secrets.token_hex(4)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def burst_command(token: str) -> str:
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2
    return f"yes {line} | head -c {BURST_BYTES}; echo; echo END-{token}"


# ------------------------------------------------------------------ connections, one interface


class Stream:
    """A console byte stream: send bytes, wait for a pattern. What it received is kept in a
    bytearray and searched only where new bytes came, so the client's own cost per chunk stays
    the same however much came before (with bytes, it grew with the total and was charged to
    whichever transport delivered smaller chunks)."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def _recv(self, timeout: float) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def expect(self, needle: bytes, since: int = 0, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        scan = since
        while (at := self.data.find(needle, scan)) < 0:
            scan = max(since, len(self.data) - len(needle) + 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{needle!r} not seen; last bytes {self.data[-300:]!r}")
            try:
                chunk = await self._recv(remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"stream ended before {needle!r}")
            self.data += chunk
        return at + len(needle)

    async def drain_quiet(self, quiet: float = 0.3) -> None:
        while True:
            try:
                chunk = await self._recv(quiet)
            except TimeoutError:
                return
            if not chunk:
                return
            self.data += chunk

    async def shell(self) -> None:
        """Reach a root shell prompt (log in if the guest shows `login:`)."""
        for _ in range(5):
            since = len(self.data)
            await self.send(b"\r")
            await self.expect(b"\n", since)
            await self.drain_quiet()
            tail = ANSI.sub(b"", self.data[since:]).rstrip()
            if tail.endswith(b"#"):
                return
            if tail.endswith(b"login:"):
                since = len(self.data)
                await self.send(b"root\r")
                await self.expect(b"Password:", since)
                await self.send(b"sercon\r")
                await self.expect(b"# ", since)
                await self.drain_quiet()
                return
        raise RuntimeError(f"no shell prompt: {self.data[-300:]!r}")


class RawSocketStream(Stream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _recv(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.reader.read(65536), timeout)

    async def close(self) -> None:
        self.writer.close()


class WsStream(Stream):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def _recv(self, timeout: float) -> bytes:
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return bytes(msg.data)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return b""

    async def close(self) -> None:
        await self.ws.close()


class SshStream(Stream):
    """An asyncssh client session; `escape` is what ends it from the far side (the gateway's `~.`)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess[bytes],
                 escape: bytes = b"\r~.") -> None:
        super().__init__()
        self.conn, self.process, self.escape = conn, process, escape

    async def send(self, data: bytes) -> None:
        self.process.stdin.write(data)

    async def _recv(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.process.stdout.read(65536), timeout)

    async def close(self) -> None:
        if self.escape:
            self.process.stdin.write(self.escape)
        self.conn.close()


class OpenSshStream(Stream):
    """The real OpenSSH client (`ssh -tt`, public key) on a pty of its own, as a user at a terminal runs it."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__()
        self.master, terminal = pty.openpty()
        tty.setraw(terminal)  # bytes pass as they are, as from a terminal emulator in raw mode
        self.proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        os.close(terminal)
        os.set_blocking(self.master, False)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            self.queue.put_nowait(os.read(self.master, 65536))
        except BlockingIOError:
            pass
        except OSError:  # the client ended: EIO on the pty
            asyncio.get_running_loop().remove_reader(self.master)
            self.queue.put_nowait(b"")

    async def send(self, data: bytes) -> None:
        os.write(self.master, data)

    async def _recv(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        self.proc.terminate()
        self.proc.wait()
        os.close(self.master)


# ------------------------------------------------------------------ the bench fleet and a bare QEMU


@dataclass
class WebBench:
    home: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    bare: BareQemu
    bare_pipe: BareQemu
    #: The ciphers the asyncssh client got from the gateway (the echo row names them).
    ssh_ciphers: set[str] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.info['port']}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.info["cert"])

    def console_sock(self) -> Path:
        return self.home / "guests" / "bench" / "console.sock"

    async def http(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context(), limit=0),
                                        cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with session.post(self.base + "/api/login", json={"user": "bench", "password": PASSWORD}) as r:
            if r.status != 200:
                raise RuntimeError(f"bench login failed: {r.status} {await r.text()}")
        return session

    async def ws(self, session: aiohttp.ClientSession, mode: str = "interactive") -> WsStream:
        ws = await session.ws_connect(self.base + f"/ws/vms/bench/console?mode={mode}&from=-1", max_msg_size=0)
        stream = WsStream(ws)
        while True:  # the hello frame; a refusal is an error frame, then the socket closes
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("type") == "hello":
                    return stream
                if frame.get("type") == "error":
                    await ws.close()
                    raise ConnectionError(f"the gateway refused the {mode} console: {frame.get('code')}: "
                                          f"{frame.get('message')}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                stream.data += msg.data
            else:  # CLOSE, CLOSING, CLOSED or ERROR: no hello will come
                await ws.close()
                raise ConnectionError(f"the {mode} console closed before its hello ({msg.type.name}, "
                                      f"close code {ws.close_code}, {msg.extra or msg.data!r})")

    async def ssh(self) -> SshStream:
        key = asyncssh.read_private_key(str(self.home / "serve" / "ssh_host_key")).convert_to_public()
        conn = await asyncssh.connect("127.0.0.1", self.info["ssh_port"], username="bench+bench", password=PASSWORD,
                                      known_hosts=([key], [], []), client_keys=None, agent_path=None)
        self.ssh_ciphers.add(str(conn.get_extra_info("send_cipher")))
        process = await conn.create_process(term_type="xterm", encoding=None)
        stream = SshStream(conn, process)
        await stream.expect(b"serial console of bench")
        return stream

    async def openssh(self) -> OpenSshStream:
        """A console through the OpenSSH client, with the bench user's key and the gateway's host key pinned."""
        scratch = self.home.parent
        known = scratch / "known_hosts"
        if not known.exists():
            key = asyncssh.read_private_key(str(self.home / "serve" / "ssh_host_key")).convert_to_public()
            known.write_text(f"[127.0.0.1]:{self.info['ssh_port']} {key.export_public_key().decode().strip()}\n")
        stream = OpenSshStream(["ssh", "-tt", "-p", str(self.info["ssh_port"]), "-i", str(scratch / "client_key"),
                                "-F", "none", "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
                                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                                "bench+bench@127.0.0.1"])
        await stream.expect(b"serial console of bench")
        return stream

    async def console_reader(self, mode: str = "read") -> RawSocketStream:
        reader, writer = await asyncio.open_unix_connection(str(self.console_sock()))
        writer.write(make_hello(mode, "bench-raw"))
        await reader.readline()
        return RawSocketStream(reader, writer)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.bare.close()
        self.bare_pipe.close()


class AsyncioOwner:
    """A second guest of the bench's image whose owner runs asyncio's own loop (SERCON_UVLOOP=0),
    so the echo row has the owner's hop on uvloop and on asyncio side by side."""

    def __init__(self, home: Path) -> None:
        from emulator import Machine

        with environment(SERCON_UVLOOP="0", SERCON_HOME=str(home)):
            self.machine = Machine("linux-initramfs", name="bench-asyncio").start()
        loop = self.machine.info()["event_loop"]
        if loop != "asyncio":
            raise RuntimeError(f"the asyncio owner runs {loop}")

    async def console(self, from_offset: int | None = None) -> RawSocketStream:
        assert self.machine.folder is not None
        reader, writer = await asyncio.open_unix_connection(str(self.machine.folder / "console.sock"))
        writer.write(make_hello("harness", "bench-asyncio", from_offset=from_offset))
        await reader.readline()
        return RawSocketStream(reader, writer)

    async def booted(self) -> None:
        """At `login:` (read from the log's start: it may have come already), so no key comes early."""
        stream = await self.console(from_offset=0)
        await stream.expect(b"login:", timeout=240)
        await stream.close()

    def close(self) -> None:
        self.machine.stop()


class PipeStream(Stream):
    """A bare QEMU's COM1 on its `pipe` chardev: read from NAME.out, written to NAME.in."""

    def __init__(self, out_fd: int, in_fd: int) -> None:
        super().__init__()
        self.out_fd, self.in_fd = out_fd, in_fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(out_fd, self._readable)

    def _readable(self) -> None:
        try:
            self.queue.put_nowait(os.read(self.out_fd, 1 << 20))
        except BlockingIOError:
            pass

    async def send(self, data: bytes) -> None:
        os.write(self.in_fd, data)  # commands are short: the FIFO takes them at once

    async def _recv(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.out_fd)


def _qemu_tls_dir(folder: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it, as QEMU's x509 credentials want them
    (it refuses a self-signed server certificate as its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from emulator.gateway.tls import issue_certificate, write_private_key

    folder.mkdir(parents=True, mode=0o700)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue_certificate("bench CA", ca_key, days=1, ca=True)
    server = issue_certificate("127.0.0.1", server_key, days=1, issuer="bench CA", signer=ca_key,
                               names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (folder / "ca-cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server-cert.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_private_key(folder / "server-key.pem", server_key)


class BareQemu:
    """The same image under the same QEMU command line, its COM1 held directly here: on a socket
    pair (what QEMU users mostly do), on `pipe` FIFOs (the owner's own transport), served by
    QEMU itself as a TLS websocket (`wss`: the chardev's `websocket=on` and `tls-creds`, no process
    between the client and the UART; the web echo's floor), or on a listening Unix socket (`unix`,
    `self.unix_path`: for a client that is not this process, OpenSSH's sshd running `nc -U`)."""

    def __init__(self, transport: str = "socket") -> None:
        spec = resolve_image("linux-initramfs")
        qemu = find_qemu()
        accel, _ = choose_accel(spec.accel, qemu, spec.kernel)
        self.transport = transport
        self.qmp, qmp_qemu = socket.socketpair()
        self.scratch = Path(tempfile.mkdtemp(prefix="sercon-bench-bare-"))
        qemu_ends = [qmp_qemu]  # QEMU's ends of the socket pairs, closed here once it has them
        self.serial: socket.socket | None = None
        self.fifo_fds: tuple[int, int] | None = None
        self.port = 0
        self.unix_path = self.scratch / "com1.sock"
        if transport == "unix":
            # wait=off: the guest boots at once; `booted()` watches its output up to the login prompt
            args = self._with_com1(spec, accel, qemu, qmp_qemu, "bench-web-bare-unix",
                                   f"path={self.unix_path},server=on,wait=off")
        elif transport == "wss":
            _qemu_tls_dir(self.scratch / "tls")
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()
            # wait=on: the guest starts when the client is there, so it misses no byte
            args = self._with_com1(spec, accel, qemu, qmp_qemu, "bench-web-bare-wss",
                                   f"host=127.0.0.1,port={self.port},server=on,wait=on,websocket=on,tls-creds=tls0")
            args[1:1] = ["-object", f"tls-creds-x509,id=tls0,dir={self.scratch / 'tls'},endpoint=server,"
                                      "verify-peer=off"]
        elif transport == "pipe":
            base = self.scratch / "com1"
            for suffix in (".in", ".out"):
                os.mkfifo(f"{base}{suffix}", 0o600)
            self.fifo_fds = (os.open(f"{base}.out", os.O_RDWR | os.O_NONBLOCK),
                             os.open(f"{base}.in", os.O_RDWR | os.O_NONBLOCK))
            args = qemu_args(spec, accel=accel, serial_pipe=str(base), qmp_fd=qmp_qemu.fileno(),
                             name="bench-web-bare-pipe", qemu=qemu)
        else:
            self.serial, serial_qemu = socket.socketpair()
            qemu_ends.append(serial_qemu)
            args = qemu_args(spec, accel=accel, serial_fd=serial_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
                             name="bench-web-bare", qemu=qemu)
        self.proc = subprocess.Popen(args, pass_fds=[end.fileno() for end in qemu_ends], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for end in qemu_ends:  # close() the objects, or their collection would close a reused descriptor
            end.close()
        if transport == "unix":
            # Connect at once: QEMU listens before the guest runs, and drops what it prints to no client.
            self.serial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            for _ in range(600):
                try:
                    self.serial.connect(str(self.unix_path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    time.sleep(0.02)
            else:
                self.close()
                raise RuntimeError(f"QEMU never listened on {self.unix_path}")
        if self.serial is not None:
            self.serial.setblocking(False)
        self._stream: Stream | None = None
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _with_com1(spec: Any, accel: str, qemu: str, qmp: socket.socket, name: str, socket_options: str) -> list[str]:
        """The bench's QEMU command line with COM1 on a socket chardev QEMU opens itself (`socket_options`)."""
        args = qemu_args(spec, accel=accel, serial_fd=0, qmp_fd=qmp.fileno(), name=name, qemu=qemu)
        at = next(i for i, arg in enumerate(args) if arg == "-chardev" and f"id={SERIAL_ID}" in args[i + 1])
        args[at + 1] = f"socket,id={SERIAL_ID},{socket_options}"
        return args

    async def stream(self) -> Stream:
        """COM1 as a stream (one per bare QEMU, made on the first call's event loop)."""
        if self._stream is None:
            if self.port:
                self._session = aiohttp.ClientSession()
                context = ssl.create_default_context(cafile=str(self.scratch / "tls" / "ca-cert.pem"))
                for _ in range(600):  # QEMU listens a moment after it starts
                    try:
                        ws = await self._session.ws_connect(f"wss://127.0.0.1:{self.port}/", ssl=context,
                                                            max_msg_size=0)
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
                else:
                    raise RuntimeError(f"QEMU's TLS websocket on port {self.port} never answered")
                self._stream = WsStream(ws)
            elif self.fifo_fds is not None:
                self._stream = PipeStream(*self.fifo_fds)
            else:
                assert self.serial is not None
                reader, writer = await asyncio.open_connection(sock=self.serial)
                self._stream = RawSocketStream(reader, writer)
        return self._stream

    async def booted(self, timeout: float = 240) -> None:
        """`unix` only: wait for the login prompt on the connection made at start, then hang up, so
        the next client (sshd's `nc -U`) is the first to type (early input slows a boot)."""
        assert self.transport == "unix" and self.serial is not None
        reader, writer = await asyncio.open_connection(sock=self.serial)
        probe = RawSocketStream(reader, writer)
        try:
            await probe.expect(b"login:", timeout=timeout)
        finally:
            await probe.close()
            self.serial = None

    async def aclose(self) -> None:
        """Close the client side first (the `wss` variant's session), then the QEMU."""
        if self._stream is not None:
            await self._stream.close()
        if self._session is not None:
            await self._session.close()
        self.close()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.serial is not None:
            self.serial.close()
        for fd in self.fifo_fds or ():
            os.close(fd)
        self.qmp.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def start_bench(home: Path | None = None) -> WebBench:
    """A one-VM fleet (`bench`, user `bench` as owner) under `sercon serve`, plus two bare QEMUs
    (COM1 on a socket, COM1 on FIFOs)."""
    home = home or Path(tempfile.mkdtemp(prefix="sercon-web-bench-"))
    client_key = home / "client_key"  # the OpenSSH client's key (bench_echo)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(client_key)], check=True)
    fleet = home / "fleet.toml"
    fleet.write_text(
        '[serve]\nhost = "127.0.0.1"\nidle_timeout = 3600\n'
        # the writer and VIEWERS read-only viewers of one VM, each on its own login of one user
        f'consoles_per_user = {VIEWERS + 8}\nconsoles_per_vm = {VIEWERS + 8}\n\n'
        '[vms.bench]\nimage = "linux-initramfs"\npolicy = "takeover"\nroles = { bench = "owner" }\n\n'
        f'[users.bench]\npassword = "{hash_password(PASSWORD)}"\n'
        f'ssh_keys = ["{client_key.with_suffix(".pub").read_text().strip()}"]\n'
    )
    env = dict(os.environ, SERCON_HOME=str(home / "state"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-u", "-m", "emulator.gateway.serve", str(fleet), "--port", "0",
                             "--ssh-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    info: dict[str, Any] | None = None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if line.startswith("SERVING "):
            info = json.loads(line[8:])
            break
    if info is None:
        proc.kill()
        raise RuntimeError("sercon serve did not start for the bench")
    stdout = proc.stdout
    threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
    return WebBench(home=home / "state", proc=proc, info=info, bare=BareQemu(), bare_pipe=BareQemu("pipe"))


# ------------------------------------------------------------------ measurements


async def _burst(writer: Stream, readers: list[Stream]) -> tuple[float, list[float]]:
    """Send the burst command on `writer`; seconds until each stream (writer first) shows its end marker."""
    token = secrets.token_hex(4)
    marks = [len(s.data) for s in (writer, *readers)]
    start = time.perf_counter()
    await writer.send(burst_command(token).encode() + b"\r")
    end = f"\nEND-{token}".encode()

    async def until(stream: Stream, since: int) -> float:
        await stream.expect(end, since, timeout=300)
        return time.perf_counter() - start

    times = await asyncio.gather(*(until(s, m) for s, m in zip((writer, *readers), marks, strict=True)))
    return times[0], list(times[1:])


async def bench_throughput(bench: WebBench, runs: int = RUNS) -> Row:
    raw = await bench.bare.stream()
    await raw.expect(b"login:", timeout=240)
    await raw.shell()
    raw_pipe = await bench.bare_pipe.stream()
    await raw_pipe.expect(b"login:", timeout=240)
    await raw_pipe.shell()
    session = await bench.http()
    web = await bench.ws(session)
    await web.shell()
    sock = await bench.console_reader()
    harness = await bench.console_reader("harness")
    samples: dict[str, list[float]] = {"raw QEMU socket": [], "raw QEMU pipe": [], "websocket": [],
                                       "owner socket beside it": [], "owner socket alone": []}

    def rate(seconds: float) -> float:
        return BURST_BYTES / seconds / 1024

    async def via_raw() -> None:
        samples["raw QEMU socket"].append(rate((await _burst(raw, []))[0]))

    async def via_raw_pipe() -> None:
        samples["raw QEMU pipe"].append(rate((await _burst(raw_pipe, []))[0]))

    async def via_web() -> None:
        web_time, (sock_time,) = await _burst(web, [sock])
        samples["websocket"].append(rate(web_time))
        samples["owner socket beside it"].append(rate(sock_time))

    async def via_owner() -> None:
        samples["owner socket alone"].append(rate((await _burst(harness, []))[0]))

    for index in range(runs):
        for step in abba(index, [via_raw, via_raw_pipe, via_web, via_owner]):
            await step()
    for stream in (harness, web, sock, raw_pipe):
        await stream.close()
    await session.close()
    return Row("web.throughput", f"guest output burst ({BURST_BYTES // 1000} kB) to the client", "KiB/s", samples,
               {"raw QEMU socket": "QEMU's socket chardev read directly: how QEMU's serial is mostly used",
                "raw QEMU pipe": "QEMU's pipe chardev (FIFOs), the owner's transport, read as it arrives",
                "owner socket beside it": "the owner's console socket, read while the websocket reads",
                "owner socket alone": "the owner's console socket in harness mode, no web client"}, rounds=runs)


async def _echo(stream: Stream, keys: int) -> list[float]:
    latencies = []
    for i in range(keys):
        key = "abcdefghij"[i % 10].encode()
        since = len(stream.data)
        start = time.perf_counter()
        await stream.send(key)
        await stream.expect(key, since, timeout=30)
        latencies.append((time.perf_counter() - start) * 1000)
    await stream.send(b"\x15")  # Ctrl-U: clear the line
    await stream.drain_quiet(0.2)
    return latencies


async def bench_echo(bench: WebBench, keys: int = ECHO_KEYS) -> Row:
    """Blocks of 10 keystrokes per path, interleaved. Console sessions are opened for each block
    (an interactive session takes over the last one, as the policy says), outside the timing; the
    raw QEMU socket stays open. The owner's console socket alone (harness mode: no gateway) splits
    the web and SSH figures into the owner's hop and the gateway's. A websocket that QEMU serves
    itself, over TLS, with no process between the client and the UART, is the web figure's floor:
    what the protocol costs this client with nothing to log, fan out or authenticate. OpenSSH's sshd
    running `nc -U` on a bare QEMU's COM1 socket is the SSH figure's floor (the same client and
    ciphers as the `ssh` path; root only, as sshd switches users). Every front end of sercon pays
    both its protocol and the owner's hop, so the `owner socket` figure bounds them too."""
    async with contextlib.AsyncExitStack() as stack:
        return await _echo_row(bench, keys, stack)


async def _echo_row(bench: WebBench, keys: int, stack: contextlib.AsyncExitStack) -> Row:
    raw = await bench.bare.stream()
    await raw.shell()
    floor_qemu = BareQemu("wss")
    stack.push_async_callback(floor_qemu.aclose)
    behind_sshd = BareQemu("unix")
    stack.callback(behind_sshd.close)
    plain_owner = AsyncioOwner(bench.home)
    stack.callback(plain_owner.close)
    from bench_floor import FloorServer

    proxy = await stack.enter_async_context(FloorServer(console=bench.console_sock()))
    floor = await floor_qemu.stream()
    await floor.expect(b"login:", timeout=240)
    await floor.shell()
    await behind_sshd.booted()
    await plain_owner.booted()
    session = await bench.http()
    stack.push_async_callback(session.close)
    sshd = None
    if os.geteuid() == 0:  # a real sshd switches users: root only (as in CI)
        sshd = stack.enter_context(loopback_sshd())

    def per_block(opener: Callable[[], Awaitable[Stream]]) -> Callable[[], Awaitable[list[float]]]:
        async def block() -> list[float]:
            stream = await opener()
            await stream.shell()
            try:
                return await _echo(stream, 10)
            finally:
                await stream.close()
        return block

    async def via_raw() -> list[float]:
        return await _echo(raw, 10)

    async def via_qemu_wss() -> list[float]:
        return await _echo(floor, 10)

    async def qemu_behind_sshd() -> SshStream:
        assert sshd is not None
        conn = await asyncssh.connect("127.0.0.1", sshd.port, username=sshd.user, client_keys=[str(sshd.key_file)],
                                      known_hosts=str(sshd.known_hosts), agent_path=None,
                                      encryption_algs=gateway_ssh.ENCRYPTION_ALGS)
        bench.ssh_ciphers.add(str(conn.get_extra_info("send_cipher")))
        # The session's pty passes bytes as they are, as the gateway's does; nc is the only hop.
        process = await conn.create_process(f"stty raw -echo; exec nc -U {behind_sshd.unix_path}",
                                            term_type="xterm", encoding=None)
        return SshStream(conn, process, escape=b"")

    variants: dict[str, Callable[[], Awaitable[list[float]]]] = {
        "raw QEMU socket": via_raw,
        "QEMU's own TLS websocket": via_qemu_wss,
        "QEMU behind OpenSSH's sshd": per_block(qemu_behind_sshd),
        "owner socket": per_block(lambda: bench.console_reader("harness")),
        "owner socket, asyncio loop": per_block(plain_owner.console),
        "Python websocket proxy on the owner socket": per_block(proxy.websocket),
        "Python SSH proxy on the owner socket": per_block(proxy.ssh),
        "websocket": per_block(lambda: bench.ws(session)),
        "ssh": per_block(bench.ssh),
        "ssh, OpenSSH client": per_block(bench.openssh),
    }
    if sshd is None:
        del variants["QEMU behind OpenSSH's sshd"]
    samples: dict[str, list[float]] = {name: [] for name in variants}
    rounds = max(1, keys // 10)
    for index in range(rounds):
        for name in abba(index, list(variants)):
            samples[name].extend(await variants[name]())
    return Row("web.echo", "one keystroke to its echo at a shell prompt", "ms", samples,
               {"QEMU's own TLS websocket": "COM1 served by QEMU's chardev (websocket=on, tls-creds), aiohttp "
                                            "client: no process between, the floor of any web front end",
                "QEMU behind OpenSSH's sshd": "asyncssh client (the ssh row's ciphers), OpenSSH's sshd on a pty, "
                                              "nc -U to COM1's socket: no owner, the floor of any SSH front end",
                "owner socket": "the owner's console socket in harness mode: the owner's hop (on uvloop), no "
                                "gateway; every front end adds its protocol and its own hop to it",
                "owner socket, asyncio loop": "the same on a second guest whose owner runs asyncio's own "
                                              "loop (SERCON_UVLOOP=0)",
                "Python websocket proxy on the owner socket": "an aiohttp server (sercon serve's TLS context "
                                                              "and loop) that forwards each websocket to the owner's "
                                                              "console socket and back, and does nothing else: the "
                                                              "floor of a web front end in its own Python process",
                "Python SSH proxy on the owner socket": "the same with an asyncssh server (sercon serve's "
                                                        "algorithms): the floor of an SSH front end in its own "
                                                        "Python process",
                "websocket": "the browser's protocol, a session per block of 10 keys",
                "ssh": "asyncssh client, " + ", ".join(sorted(bench.ssh_ciphers)),
                "ssh, OpenSSH client": "OpenSSH's ssh -tt on a pty, public key"}, rounds=rounds)


def _is_slice_of(data: bytes, log: bytes) -> bool:
    """True if `data` stands in `log` as one unbroken run: every byte, in order, nothing added."""
    return bool(data) and log.find(data) >= 0


async def bench_viewers(bench: WebBench, viewers: int = VIEWERS, runs: int = VIEWER_RUNS) -> list[Row]:
    """The writer's burst alone (no viewer connected) and with `viewers` read-only websockets,
    interleaved; each crowded round connects its viewers and checks every byte they got."""
    session = await bench.http()
    writer = await bench.ws(session)
    await writer.shell()
    sessions = [await bench.http() for _ in range(viewers)]
    crowd = f"with {viewers} viewers"
    samples: dict[str, list[float]] = {"alone": [], crowd: []}
    seen: list[bytes] = []

    async def alone() -> None:
        samples["alone"].append((await _burst(writer, []))[0] * 1000)

    async def crowded() -> None:
        watching = [await bench.ws(s, "read") for s in sessions]
        w, _ = await _burst(writer, list(watching))
        samples[crowd].append(w * 1000)
        await asyncio.gather(*(stream.drain_quiet(0.3) for stream in watching))
        for stream in watching:
            seen.append(bytes(stream.data))
            await stream.close()

    for index in range(runs):
        for step in abba(index, [alone, crowded]):
            await step()
    log = (bench.home / "guests" / "bench" / "serial.log").read_bytes()
    exact = [1.0 if _is_slice_of(data, log) else 0.0 for data in seen]
    await writer.close()
    for s in (session, *sessions):
        await s.close()
    return [
        Row("web.viewers", f"writer's burst with read-only viewers ({BURST_BYTES // 1000} kB)", "ms", samples,
            {crowd: "websocket viewers of the same VM, connected for the round, reading everything"}, rounds=runs),
        Row("web.viewers.bytes", "each viewer's bytes are an unbroken run of the serial log", "1 = exact",
            {"viewers": exact}),
    ]


def run_all(home: Path | None = None) -> list[Row]:
    """Start the bench fleet and a bare QEMU, measure everything, stop them; returns the rows."""
    bench = start_bench(home)
    try:
        async def go() -> list[Row]:
            return [await bench_throughput(bench), await bench_echo(bench), *await bench_viewers(bench)]
        rows = asyncio.run(go())
    finally:
        bench.close()
    from bench_floor import bench_floor

    return [*rows, bench_floor()]


def main() -> int:
    for row in run_all():
        print(row.label, row.skipped or json.dumps(row.stats(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
