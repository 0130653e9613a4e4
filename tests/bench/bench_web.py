"""Speed of the network front ends (`sercon serve`), each against a raw baseline measured in the same run.

- throughput: a burst of guest output (`yes ... | head -c N`) timed from the command to its end
  marker, through the browser-side websocket client vs a bare QEMU's own serial socket (same
  image, same command; goal: web >= 90% of raw). The owner's console socket, read at the same
  time as the websocket, is reported too.
- echo latency: one keystroke to its echo at a shell prompt, through the websocket and through
  SSH vs the bare QEMU socket (medians and 95th percentiles).
- viewers: the same burst for the writer with 0 and with 20 read-only websocket viewers of the
  same VM (goal: the writer does not slow down; every viewer gets the whole burst).

Call `run_all()` (starts its own one-VM fleet and a bare QEMU, returns a dict), or the pieces
with a `WebBench` from `start_bench()`. `python tests/bench/bench_web.py` prints the results.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emulator import resolve_image  # noqa: E402
from emulator.accel import choose_accel  # noqa: E402
from emulator.gateway.auth import hash_password  # noqa: E402
from emulator.qemu_args import find_qemu, qemu_args  # noqa: E402

BURST_BYTES = int(os.environ.get("SERCON_BENCH_BURST", "400000"))
ECHO_KEYS = int(os.environ.get("SERCON_BENCH_ECHO_KEYS", "40"))
VIEWERS = 20
PASSWORD = "bench-password-" + secrets.token_hex(4)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def burst_command(token: str) -> str:
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2
    return f"yes {line} | head -c {BURST_BYTES}; echo; echo END-{token}"


# ------------------------------------------------------------------ connections, one interface


class Stream:
    """A console byte stream: send bytes, wait for a pattern."""

    def __init__(self) -> None:
        self.data = b""

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def _recv(self, timeout: float) -> bytes:
        raise NotImplementedError

    async def expect(self, needle: bytes, since: int = 0, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while (at := self.data.find(needle, since)) < 0:
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
    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess[bytes]) -> None:
        super().__init__()
        self.conn, self.process = conn, process

    async def send(self, data: bytes) -> None:
        self.process.stdin.write(data)

    async def _recv(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.process.stdout.read(65536), timeout)

    async def close(self) -> None:
        self.process.stdin.write(b"\r~.")
        self.conn.close()


# ------------------------------------------------------------------ the bench fleet and a bare QEMU


@dataclass
class WebBench:
    home: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    bare: BareQemu

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
        while True:  # the hello frame
            msg = await ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "hello":
                return stream
            if msg.type == aiohttp.WSMsgType.BINARY:
                stream.data += msg.data

    async def ssh(self) -> SshStream:
        key = asyncssh.read_private_key(str(self.home / "serve" / "ssh_host_key")).convert_to_public()
        conn = await asyncssh.connect("127.0.0.1", self.info["ssh_port"], username="bench+bench", password=PASSWORD,
                                      known_hosts=([key], [], []), client_keys=None, agent_path=None)
        process = await conn.create_process(term_type="xterm", encoding=None)
        stream = SshStream(conn, process)
        await stream.expect(b"serial console of bench")
        return stream

    async def console_reader(self, mode: str = "read") -> RawSocketStream:
        reader, writer = await asyncio.open_unix_connection(str(self.console_sock()))
        writer.write(json.dumps({"mode": mode, "client": "bench-raw", "from_offset": None}).encode() + b"\n")
        await reader.readline()
        return RawSocketStream(reader, writer)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.bare.close()


class BareQemu:
    """The same image under the same QEMU command line, its serial socket held directly here."""

    def __init__(self) -> None:
        spec = resolve_image("linux-initramfs")
        qemu = find_qemu()
        accel, _ = choose_accel(spec.accel, qemu, spec.kernel)
        self.serial, serial_qemu = socket.socketpair()
        self.qmp, qmp_qemu = socket.socketpair()
        args = qemu_args(spec, accel=accel, serial_fd=serial_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
                         name="bench-web-bare", qemu=qemu)
        self.proc = subprocess.Popen(args, pass_fds=(serial_qemu.fileno(), qmp_qemu.fileno()),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serial_qemu.close()
        qmp_qemu.close()
        self.serial.setblocking(False)
        self._stream: RawSocketStream | None = None

    async def stream(self) -> RawSocketStream:
        """The serial socket as a stream (one per bare QEMU, made on the first call's event loop)."""
        if self._stream is None:
            reader, writer = await asyncio.open_connection(sock=self.serial)
            self._stream = RawSocketStream(reader, writer)
        return self._stream

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.serial.close()
        self.qmp.close()


def start_bench(home: Path | None = None) -> WebBench:
    """A one-VM fleet (`bench`, user `bench` as owner) under `sercon serve`, plus a bare QEMU."""
    home = home or Path(tempfile.mkdtemp(prefix="sercon-web-bench-"))
    fleet = home / "fleet.toml"
    fleet.write_text(
        '[serve]\nhost = "127.0.0.1"\nidle_timeout = 3600\n\n'
        '[vms.bench]\nimage = "linux-initramfs"\npolicy = "takeover"\nroles = { bench = "owner" }\n\n'
        f'[users.bench]\npassword = "{hash_password(PASSWORD)}"\n'
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
    return WebBench(home=home / "state", proc=proc, info=info, bare=BareQemu())


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


async def bench_throughput(bench: WebBench, runs: int = 5) -> dict[str, Any]:
    raw = await bench.bare.stream()
    await raw.expect(b"login:", timeout=240)
    await raw.shell()
    session = await bench.http()
    web = await bench.ws(session)
    await web.shell()
    sock = await bench.console_reader()
    harness = await bench.console_reader("harness")
    raw_times, web_times, sock_times, owner_times = [], [], [], []
    for _ in range(runs):
        raw_times.append((await _burst(raw, []))[0])
        web_time, (sock_time,) = await _burst(web, [sock])
        web_times.append(web_time)
        sock_times.append(sock_time)
        owner_times.append((await _burst(harness, []))[0])
    await harness.close()
    await web.close()
    await sock.close()
    await session.close()
    raw_bps = BURST_BYTES / statistics.median(raw_times)
    web_bps = BURST_BYTES / statistics.median(web_times)
    return {
        "burst_bytes": BURST_BYTES, "runs": runs,
        "raw_qemu_kib_s": round(raw_bps / 1024, 1),
        "web_websocket_kib_s": round(web_bps / 1024, 1),
        "owner_console_socket_kib_s": round(BURST_BYTES / statistics.median(sock_times) / 1024, 1),
        "owner_console_socket_alone_kib_s": round(BURST_BYTES / statistics.median(owner_times) / 1024, 1),
        "web_vs_raw": round(web_bps / raw_bps, 3), "goal": ">= 0.90",
        # The web path's own cost: websocket vs the owner's console socket alone (no web client running).
        "web_vs_owner_socket": round(statistics.median(owner_times) / statistics.median(web_times), 3),
    }


async def _echo(stream: Stream, keys: int) -> list[float]:
    await stream.shell()
    latencies = []
    for i in range(keys):
        key = "abcdefghij"[i % 10].encode()
        since = len(stream.data)
        start = time.perf_counter()
        await stream.send(key)
        await stream.expect(key, since, timeout=30)
        latencies.append(time.perf_counter() - start)
        if i % 10 == 9:
            await stream.send(b"\x15")  # Ctrl-U: clear the line
            await stream.drain_quiet(0.2)
    await stream.send(b"\x15")
    await stream.drain_quiet(0.2)
    return latencies


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2)}


async def bench_echo(bench: WebBench, keys: int = ECHO_KEYS) -> dict[str, Any]:
    raw = await bench.bare.stream()
    raw_lat = await _echo(raw, keys)
    session = await bench.http()
    web = await bench.ws(session)
    web_lat = await _echo(web, keys)
    await web.close()
    await session.close()
    ssh = await bench.ssh()
    ssh_lat = await _echo(ssh, keys)
    await ssh.close()
    raw_ms, web_ms, ssh_ms = _ms(raw_lat), _ms(web_lat), _ms(ssh_lat)
    return {"keys": keys, "raw_qemu": raw_ms, "web": web_ms, "ssh": ssh_ms,
            "web_vs_raw": round(web_ms["median_ms"] / raw_ms["median_ms"], 2),
            "ssh_vs_raw": round(ssh_ms["median_ms"] / raw_ms["median_ms"], 2)}


async def bench_viewers(bench: WebBench, viewers: int = VIEWERS, runs: int = 3) -> dict[str, Any]:
    session = await bench.http()
    writer = await bench.ws(session)
    await writer.shell()
    alone = [(await _burst(writer, []))[0] for _ in range(runs)]
    sessions = [await bench.http() for _ in range(viewers)]
    watching = [await bench.ws(s, "read") for s in sessions]
    crowded, viewer_times = [], []
    for _ in range(runs):
        w, v = await _burst(writer, list(watching))
        crowded.append(w)
        viewer_times.extend(v)
    for stream in (writer, *watching):
        await stream.close()
    for s in (session, *sessions):
        await s.close()
    return {
        "viewers": viewers, "runs": runs,
        "writer_alone_s": round(statistics.median(alone), 3),
        "writer_with_viewers_s": round(statistics.median(crowded), 3),
        "writer_speed_with_viewers": round(statistics.median(alone) / statistics.median(crowded), 3),
        "slowest_viewer_s": round(max(viewer_times), 3),
        "all_viewers_got_everything": len(viewer_times) == viewers * runs,
        "goal": "writer speed with viewers ~1.0",
    }


def run_all(home: Path | None = None) -> dict[str, Any]:
    """Start the bench fleet and a bare QEMU, measure everything, stop them; returns the results."""
    bench = start_bench(home)
    try:
        async def go() -> dict[str, Any]:
            return {
                "throughput": await bench_throughput(bench),
                "echo_latency": await bench_echo(bench),
                "viewers": await bench_viewers(bench),
            }
        return asyncio.run(go())
    finally:
        bench.close()


def main() -> int:
    results = run_all()
    print(json.dumps(results, indent=2))
    out = ROOT / "tests" / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_web.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
