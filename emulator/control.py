"""The control socket: JSON lines between a guest's owner and the processes that command it.

`control.sock` in the guest's folder. A client sends one JSON object a line,
`{"op": "sysrq", "keys": "reisub"}`, and gets one back: `{"ok": true, "result": ...}` or
`{"ok": false, "error": {"type": "InvalidSysRqKey", "message": "..."}}`. The error type is an
`emulator.errors` class name, re-raised as such by `ControlClient`. The op `subscribe` turns the
connection into a stream of event records (one JSON object a line) until the client closes it.

The operations, their arguments and who may use them are the table in `emulator.operations`;
besides them there is `subscribe`. Every request may carry `"by"`: on whose behalf (the gateway
passes its user), recorded with the caller's uid in every event the operation writes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ControlError, GuestNotRunning, SerconError, UnknownGuest
from .operations import ACTOR, lookup
from .protocol import decode_reply, send_line
from .serial_log import EventLog, read_log
from .trust import peer_uid, refusal, scrub_label, trusted_uid

if TYPE_CHECKING:
    from .owner import ConsoleOwner

MAX_LINE = 1024 * 1024

class ControlServer:
    def __init__(self, owner: ConsoleOwner, path: Path) -> None:
        self.owner = owner
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if not trusted_uid(uid):
            self.owner.record("control_refused", uid=uid)
            await send_line(writer, {"ok": False, "error": {"type": "ControlError", "message": refusal(uid)}})
            writer.close()
            return
        pending: asyncio.Task[bytes] | None = None
        try:
            while True:
                line = await (pending or reader.readline())
                pending = None
                if not line:
                    break
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                        raise ControlError('a request is a JSON object with an "op" string')
                    if request["op"] == "subscribe":
                        await self._subscribe(writer)
                        return
                    work = asyncio.ensure_future(self.dispatch(request, uid))
                    if lookup(request["op"]).cancel_on_hangup:
                        # The requester hanging up (an HTTP request that timed out) ends the operation.
                        pending = asyncio.ensure_future(reader.readline())
                        await asyncio.wait({work, pending}, return_when=asyncio.FIRST_COMPLETED)
                        if pending.done() and not pending.result() and not work.done():
                            work.cancel()
                            try:
                                await work
                            except (asyncio.CancelledError, SerconError):
                                pass
                            return
                    result = await work
                    reply: dict[str, Any] = {"ok": True, "result": result}
                except SerconError as exc:
                    reply = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
                except (ValueError, TypeError, KeyError) as exc:
                    reply = {"ok": False, "error": {"type": "ControlError", "message": f"bad request: {exc}"}}
                await send_line(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            # The owner is ending with this client connected. asyncio (3.11) would log the
            # cancelled handler as an "Exception in callback" in owner.log: end it quietly.
            return
        finally:
            if pending is not None:
                pending.cancel()
            writer.close()

    async def _subscribe(self, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.owner.subscribers.add(queue)
        try:
            writer.write(json.dumps({"ok": True, "result": "subscribed"}).encode() + b"\n")
            await writer.drain()
            while True:
                record = await queue.get()
                writer.write(json.dumps(record).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.owner.subscribers.discard(queue)

    async def dispatch(self, request: dict[str, Any], uid: int | None = None) -> Any:
        """Run one request through the operations table: a known operation, checked arguments, and
        everything it records marked with who asked (the peer's uid, and the gateway's user if any)."""
        op = lookup(request.get("op"))
        args = op.parse(request)
        by = f"uid {uid}" if uid is not None else "owner"
        if isinstance(request.get("by"), str):
            by += f" for {scrub_label(request['by'])}"
        token = ACTOR.set(by)
        try:
            return await self.handlers[op.name](args, uid)
        finally:
            ACTOR.reset(token)

    @property
    def handlers(self) -> dict[str, Callable[[dict[str, Any], int | None], Awaitable[Any]]]:
        """One handler per entry of emulator.operations.OPERATIONS (a unit test checks they match)."""
        owner = self.owner

        async def info(a: dict[str, Any], uid: int | None) -> Any:
            return owner.info()

        async def log(a: dict[str, Any], uid: int | None) -> Any:
            chunk = read_log(owner.serial_log.path, a["start"], a["length"])
            return {"start": chunk.start, "size": chunk.size, "data": base64.b64encode(chunk.data).decode()}

        async def events(a: dict[str, Any], uid: int | None) -> Any:
            return [e for e in EventLog.read(owner.events.path) if e["time"] >= a["since"]]

        async def send_break(a: dict[str, Any], uid: int | None) -> Any:
            await owner.send_break()
            owner.record("break", source="control")

        async def stop(a: dict[str, Any], uid: int | None) -> Any:
            await owner.stop()

        return {
            "info": info, "log": log, "events": events, "send_break": send_break, "stop": stop,
            "sysrq": lambda a, uid: owner.sysrq(a["keys"], a["interval"]),
            "nmi": lambda a, uid: owner.nmi(),
            "reset": lambda a, uid: owner.reset(),
            "restart": lambda a, uid: owner.restart(a["timeout"]),
            "power_cycle": lambda a, uid: owner.power_cycle(),
            "snapshot": lambda a, uid: owner.save_snapshot(a["name"], a["extra"]),
            "restore": lambda a, uid: owner.restore_snapshot(a["name"]),
            "screenshot": lambda a, uid: owner.screenshot(a["path"], uid=uid),
            "qmp": lambda a, uid: owner.qmp_passthrough(a["command"], a["arguments"], uid=uid),
        }


class ControlClient:
    """Blocking client for one guest's control socket."""

    def __init__(self, path: Path, timeout: float | None = 120.0) -> None:
        self.path = path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise UnknownGuest(
                f"no guest owner is listening on {self.path} (is the guest up? see `sercon ls`)"
            ) from exc
        except PermissionError as exc:
            sock.close()
            raise UnknownGuest(f"{self.path} belongs to another user: a guest is controlled by its own user "
                               "and root only") from exc
        return sock

    def call(self, op: str, io_timeout: float | None = None, **args: Any) -> Any:
        """Run one op; `io_timeout` bounds the wait for its answer (default: the client's)."""
        sock = self._connect()
        if io_timeout is not None:
            sock.settimeout(io_timeout)
        try:
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            reply = _read_json_line(sock)
        finally:
            sock.close()
        if reply is None:
            raise GuestNotRunning(f"the guest owner closed the control connection during {op!r}")
        return decode_reply(reply, repr(op))

    def subscribe(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield event records as they happen. Stops when the owner goes away."""
        sock = self._connect()
        sock.settimeout(timeout)
        try:
            sock.sendall(b'{"op": "subscribe"}\n')
            buffered = sock.makefile("rb")
            first = buffered.readline()
            if not first:
                return
            for line in buffered:
                yield json.loads(line)
        finally:
            sock.close()


def _read_json_line(sock: socket.socket) -> dict[str, Any] | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    result: dict[str, Any] = json.loads(data)
    return result
