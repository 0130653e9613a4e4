"""The console socket: a guest's COM1 as a plain byte stream, after a one-line handshake.

`console.sock` in the guest's folder. The client sends one JSON line:
`{"mode": "read" | "interactive" | "harness", "client": "who", "from_offset": N, "notices": bool}`
and the owner answers one JSON line, `{"ok": true, "offset": N, ...}` (the serial log offset where
the live stream starts, after any replay) or `{"ok": false, "error": {...}}`. From then on the
socket carries raw bytes both ways: guest output to the client, keystrokes to the guest.

Modes: `read` never types; `interactive` is the one human session (takeover or reject policy);
`harness` types without taking over anyone (automation next to a watching human).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ERROR_CLASSES, ConsoleBusy, ControlError, SerconError, UnknownGuest

if TYPE_CHECKING:
    from .owner import ConsoleOwner

MODES = ("read", "interactive", "harness")


class ConsoleServer:
    def __init__(self, owner: ConsoleOwner, path: Path) -> None:
        self.owner = owner
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = json.loads(await asyncio.wait_for(reader.readline(), timeout=10))
            if not isinstance(hello, dict) or hello.get("mode") not in MODES:
                raise ControlError(f"console handshake needs a mode, one of {', '.join(MODES)}")
        except (TimeoutError, ValueError, ConnectionError, ControlError) as exc:
            await _reply(writer, {"ok": False, "error": {"type": "ControlError", "message": f"bad handshake: {exc}"}})
            writer.close()
            return
        await serve_console_client(self.owner, reader, writer, hello)


async def serve_console_client(
    owner: ConsoleOwner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: dict[str, Any]
) -> None:
    """Attach one client per its hello, then pump its keystrokes until it goes away."""
    from_offset = hello.get("from_offset")
    try:
        client = owner.attach(
            hello["mode"], str(hello.get("client", "anonymous"))[:80], writer,
            from_offset=int(from_offset) if from_offset is not None else None,
            notices=bool(hello.get("notices", False)),
            greeting=lambda offset: json.dumps({"ok": True, "offset": offset, "state": owner.state}).encode() + b"\n",
        )
    except SerconError as exc:
        await _reply(writer, {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}})
        writer.close()
        return
    try:
        while True:
            data = await reader.read(4096)
            if not data:
                break
            try:
                await owner.client_input(client, data)
            except SerconError as exc:
                client.notice(str(exc))
    except ConnectionError:
        pass
    finally:
        owner.detach(client)


async def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    try:
        await writer.drain()
    except ConnectionError:
        pass


def open_console(
    path: Path, mode: str = "harness", *, client: str = "python", from_offset: int | None = None,
    notices: bool = False, timeout: float = 10.0,
) -> tuple[socket.socket, dict[str, Any]]:
    """Connect and handshake; returns the raw socket (blocking) and the owner's reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise UnknownGuest(f"no console is listening on {path} (is the guest up? see `sercon ls`)") from exc
    hello = {"mode": mode, "client": client, "from_offset": from_offset, "notices": notices}
    sock.sendall(json.dumps(hello).encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            sock.close()
            raise ConsoleBusy("the console closed the connection during the handshake")
        line += byte
    reply = json.loads(line)
    if not reply.get("ok"):
        sock.close()
        error = reply.get("error", {})
        raise ERROR_CLASSES.get(error.get("type", ""), SerconError)(error.get("message", "console refused"))
    sock.settimeout(None)
    return sock, reply
