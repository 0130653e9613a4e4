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

from .errors import ConsoleBusy, ControlError, SerconError, UnknownGuest
from .protocol import MODES, Hello, decode_reply, error_reply, make_hello, parse_hello, send_line
from .trust import peer_uid, refusal, trusted_uid

if TYPE_CHECKING:
    from .owner import ConsoleOwner

__all__ = ["MODES", "ConsoleServer", "open_console", "serve_console_client"]


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
        uid = peer_uid(writer.get_extra_info("socket"))
        if not trusted_uid(uid):
            self.owner.record("console_refused", uid=uid, reason="peer uid")
            await send_line(writer, {"ok": False, "error": {"type": "ControlError", "message": refusal(uid)}})
            writer.close()
            return
        try:
            hello = parse_hello(await asyncio.wait_for(reader.readline(), timeout=10))
        except ControlError as exc:
            await send_line(writer, error_reply(exc))
            writer.close()
            return
        except (TimeoutError, ValueError, ConnectionError) as exc:
            await send_line(writer, error_reply(ControlError(f"bad handshake: {exc or 'no hello line within 10 s'}")))
            writer.close()
            return
        await serve_console_client(self.owner, reader, writer, hello)


async def serve_console_client(
    owner: ConsoleOwner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: Hello
) -> None:
    """Attach one client per its hello, then pump its keystrokes until it goes away."""
    try:
        client = owner.attach(
            hello.mode, hello.client, writer, from_offset=hello.from_offset, notices=hello.notices,  # type: ignore[arg-type]
            events=hello.events, replay_max=hello.replay_max,
            greeting=lambda offset, replay: json.dumps(
                {"ok": True, "offset": offset, "replay_from": replay, "state": owner.state}).encode() + b"\n",
        )
    except SerconError as exc:
        await send_line(writer, error_reply(exc))
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


def open_console(
    path: Path, mode: str = "harness", *, client: str = "python", from_offset: int | None = None,
    notices: bool = False, events: bool = False, timeout: float = 10.0,
) -> tuple[socket.socket, dict[str, Any]]:
    """Connect and handshake; returns the raw socket (blocking) and the owner's reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise UnknownGuest(f"no console is listening on {path} (is the guest up? see `sercon ls`)") from exc
    except PermissionError as exc:
        sock.close()
        raise UnknownGuest(f"{path} belongs to another user: a guest's console is for its own user and root") from exc
    sock.sendall(make_hello(mode, client, from_offset=from_offset, notices=notices, events=events))
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            sock.close()
            raise ConsoleBusy("the console closed the connection during the handshake")
        line += byte
    try:
        reply: dict[str, Any] = decode_reply(json.loads(line), "the console handshake")
    except (SerconError, ValueError):
        sock.close()
        raise
    sock.settimeout(None)
    return sock, reply
