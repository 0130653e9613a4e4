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


async def _serve(folder: Path) -> None:
    """The echo server: HTTPS websocket and SSH, configured as sercon serve's; prints its ports."""
    from aiohttp import web

    from emulator.gateway import ssh as gateway_ssh
    from emulator.gateway.tls import generate_self_signed, server_context

    cert, key = folder / "cert.pem", folder / "key.pem"
    generate_self_signed(cert, key, "127.0.0.1")

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        async for message in ws:
            await ws.send_bytes(message.data if isinstance(message.data, bytes) else message.data.encode())
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
        while data := await process.stdin.read(4096):
            process.stdout.write(data)
            await process.stdout.drain()
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

    async def main() -> int:
        await _serve(folder)
        return 0

    event_loop.run(main())


async def _measure(keys: int, ciphers: set[str]) -> dict[str, list[float]]:
    from bench_web import OpenSshStream, SshStream, Stream, WsStream, _echo

    folder = Path(tempfile.mkdtemp(prefix="sercon-bench-floor-"))
    server = subprocess.Popen([sys.executable, __file__, "serve", str(folder)], stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert server.stdout is not None
        info: dict[str, Any] = json.loads(server.stdout.readline())
        tls = ssl.create_default_context(cafile=info["cert"])
        session = aiohttp.ClientSession()

        async def websocket() -> Stream:
            return WsStream(await session.ws_connect(f"https://127.0.0.1:{info['https']}/echo", ssl=tls))

        async def ssh() -> Stream:
            conn = await asyncssh.connect("127.0.0.1", info["ssh"], username="bench", known_hosts=None,
                                          client_keys=None, agent_path=None, password=None)
            ciphers.add(str(conn.get_extra_info("send_cipher")))
            return SshStream(conn, await conn.create_process(term_type="xterm", encoding=None))

        async def openssh() -> Stream:
            stream = OpenSshStream(["ssh", "-tt", "-p", str(info["ssh"]), "-F", "none", "-o", "BatchMode=yes",
                                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                    "-o", "LogLevel=ERROR", "bench@127.0.0.1"])
            await stream.send(b"x")
            await stream.expect(b"x", timeout=30)
            return stream

        openers = {"TLS websocket": websocket, "ssh": ssh, "ssh, OpenSSH client": openssh}
        samples: dict[str, list[float]] = {name: [] for name in openers}
        for index in range(max(1, keys // 10)):
            for name in abba(index, list(openers)):
                stream = await openers[name]()
                try:
                    samples[name].extend(await _echo(stream, 10))
                finally:
                    await stream.close()
        await session.close()
        return samples
    finally:
        server.kill()
        server.wait()


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
