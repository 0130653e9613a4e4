"""The protocols' own cost: one keystroke echoed by a server with no guest and no owner behind it.

`sercon serve` puts two things between a user and the owner's console socket: a protocol (TLS +
websocket, or SSH) and a process hop. This row measures the first alone, so the echo row splits
into raw QEMU, the owner's hop, the protocol, and what is left (the gateway's hop and plumbing).
The server is a separate process set up as `sercon serve` sets itself up (its TLS context and
certificate, its SSH algorithms and options, its event loop); it echoes each message back at once.
The clients are the echo row's: aiohttp, asyncssh, and OpenSSH's `ssh -tt` on a pty.

`python tests/bench/bench_floor.py` prints the row; `bench_web.run_all` records it as `web.echo.floor`.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import asyncssh  # noqa: E402
from record import Row, abba  # noqa: E402

KEYS = 100


async def _owner_console(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The owner's console socket in harness mode: plain bytes both ways, the least it serves."""
    from emulator.protocol import make_hello

    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(make_hello("harness", "bench-proxy"))
    await reader.readline()
    return reader, writer


async def _serve(folder: Path, console: str | None = None) -> None:
    """The echo server: HTTPS websocket and SSH, configured as sercon serve's; prints its ports.

    With `console` (an owner's console socket) it is a proxy instead: each websocket or SSH session
    is forwarded to that socket and back, with nothing else in between (no login, roles, bridge,
    audit or pacing). That is the least a front end in its own Python process can do through the
    owner: the floor of sercon serve's design."""
    from aiohttp import web

    from emulator.gateway import ssh as gateway_ssh
    from emulator.gateway.tls import generate_self_signed, server_context

    cert, key = folder / "cert.pem", folder / "key.pem"
    generate_self_signed(cert, key, "127.0.0.1")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        if console is None:
            async for message in ws:
                await ws.send_bytes(message.data if isinstance(message.data, bytes) else message.data.encode())
            return ws
        reader, writer = await _owner_console(console)

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)

        task = asyncio.create_task(down())
        try:
            async for message in ws:
                writer.write(message.data if isinstance(message.data, bytes) else message.data.encode())
        finally:
            task.cancel()
            writer.close()
        return ws

    app = web.Application()
    app.router.add_get("/echo", websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, key))
    await site.start()
    assert site._server is not None and site._server.sockets  # type: ignore[attr-defined]
    https_port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
        if console is None:
            while data := await process.stdin.read(4096):
                process.stdout.write(data)
                await process.stdout.drain()
            process.exit(0)
            return
        reader, writer = await _owner_console(console)

        async def down() -> None:
            while data := await reader.read(65536):
                process.stdout.write(data)
                await process.stdout.drain()

        task = asyncio.create_task(down())
        try:
            while data := await process.stdin.read(4096):
                writer.write(data)
        finally:
            task.cancel()
            writer.close()
            process.exit(0)

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False  # no authentication: this server only measures the transport

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        Server, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=echo, encoding=None,
        line_editor=False, allow_scp=False, agent_forwarding=False, x11_forwarding=False,
        kex_algs=gateway_ssh.KEX_ALGS, encryption_algs=gateway_ssh.ENCRYPTION_ALGS, mac_algs=gateway_ssh.MAC_ALGS,
        signature_algs=gateway_ssh.SIGNATURE_ALGS, compression_algs=["none"],
    )
    ssh_port = server.sockets[0].getsockname()[1]
    print(json.dumps({"https": https_port, "ssh": ssh_port, "cert": str(cert)}), flush=True)
    await asyncio.Event().wait()


def serve_main() -> None:
    from emulator import event_loop

    folder = Path(sys.argv[2])
    console = sys.argv[3] if len(sys.argv) > 3 else None

    async def main() -> int:
        await _serve(folder, console)
        return 0

    event_loop.run(main())


class FloorServer:
    """`_serve` in its own process, and clients for it: the echo server, or with `console` the
    proxy to an owner's console socket. Use as `async with FloorServer() as server:`."""

    def __init__(self, console: Path | None = None) -> None:
        self.console = console
        self.ciphers: set[str] = set()

    async def __aenter__(self) -> FloorServer:
        folder = Path(tempfile.mkdtemp(prefix="sercon-bench-floor-"))
        argv = [sys.executable, __file__, "serve", str(folder), *([str(self.console)] if self.console else [])]
        self.server = subprocess.Popen(argv, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert self.server.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self.server.stdout.readline)
        self.info: dict[str, Any] = json.loads(line)
        self.tls = ssl.create_default_context(cafile=self.info["cert"])
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        self.server.kill()
        self.server.wait()

    async def websocket(self) -> Any:
        from bench_web import WsStream

        return WsStream(await self.session.ws_connect(f"https://127.0.0.1:{self.info['https']}/echo", ssl=self.tls))

    async def ssh(self) -> Any:
        from bench_web import SshStream

        conn = await asyncssh.connect("127.0.0.1", self.info["ssh"], username="bench", known_hosts=None,
                                      client_keys=None, agent_path=None, password=None)
        self.ciphers.add(str(conn.get_extra_info("send_cipher")))
        # the proxy passes everything to the guest: nothing to send to end the session
        return SshStream(conn, await conn.create_process(term_type="xterm", encoding=None),
                         escape=b"" if self.console else b"\r~.")

    async def openssh(self) -> Any:
        from bench_web import OpenSshStream

        stream = OpenSshStream(["ssh", "-tt", "-p", str(self.info["ssh"]), "-F", "none", "-o", "BatchMode=yes",
                                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                "-o", "LogLevel=ERROR", "bench@127.0.0.1"])
        await stream.send(b"x")
        await stream.expect(b"x", timeout=30)
        return stream


async def _measure(keys: int, ciphers: set[str]) -> dict[str, list[float]]:
    from bench_web import _echo

    async with FloorServer() as server:
        openers = {"TLS websocket": server.websocket, "ssh": server.ssh, "ssh, OpenSSH client": server.openssh}
        samples: dict[str, list[float]] = {name: [] for name in openers}
        for index in range(max(1, keys // 10)):
            for name in abba(index, list(openers)):
                stream = await openers[name]()
                try:
                    samples[name].extend(await _echo(stream, 10))
                finally:
                    await stream.close()
        ciphers.update(server.ciphers)
        return samples


def bench_floor(keys: int = KEYS) -> Row:
    ciphers: set[str] = set()
    samples = asyncio.run(_measure(keys, ciphers))
    return Row("web.echo.floor", "one keystroke echoed by a server with no guest: the protocol's own cost", "ms",
               samples, {"TLS websocket": "aiohttp server with sercon serve's TLS context and event loop",
                         "ssh": "asyncssh server with sercon serve's algorithms, asyncssh client, "
                                + ", ".join(sorted(ciphers)),
                         "ssh, OpenSSH client": "the same server, OpenSSH's ssh -tt on a pty"},
               rounds=max(1, keys // 10))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_main()
    else:
        row = bench_floor()
        print(row.label, json.dumps(row.stats(), indent=1))
