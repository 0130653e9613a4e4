"""COM1 as an RFC 2217 network serial port on localhost, as ser2net or a terminal server offers it.

Off unless asked for (`sercon up --rfc2217`, `Machine(..., rfc2217=True)`, `rfc2217 = true` for a
fleet VM). RFC 2217 has no authentication, so while the port is open any local user who finds
it (`ss -ltn` lists it) types into the console, like a ser2net port on a shared host. It binds
127.0.0.1 only, and every connection is recorded in the guest's event log with its peer address
(`rfc2217_connect`, `rfc2217_disconnect`), as is every line setting a client makes
(`rfc2217_line`). To share a console with other people, use `sercon serve` (logins, roles, audit).

Any RFC 2217 client reaches the guest's UART as if it were real hardware:
`python -m serial.tools.miniterm rfc2217://127.0.0.1:PORT`, or pyserial's
`serial.serial_for_url("rfc2217://...")`. A client's BREAK becomes a BREAK on the guest's 16550
(so Ctrl+T Ctrl+B then a key in miniterm is SysRq). Line settings (baud rate, parity) are
accepted and reported back but change nothing: QEMU's UART is not throttled.

The Telnet/RFC 2217 option state machine is pyserial's own `PortManager`; this module gives it a
port-like adapter and runs it on the owner's asyncio loop. Connections are `interactive` console
clients, so the guest's takeover or reject policy applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from serial import rfc2217

from .errors import SerconError

if TYPE_CHECKING:
    from .owner import ConsoleClient, ConsoleOwner

log = logging.getLogger("sercon.rfc2217")


def escape_iac(data: bytes) -> bytes:
    return data.replace(b"\xff", b"\xff\xff")


class PortManager(rfc2217.PortManager):  # type: ignore[misc]  # pyserial has no type hints
    """pyserial's state machine, minus one crash: a Telnet SE with no SB before it raised
    TypeError out of `filter` and ended the connection (found by the fuzz test). It is ignored,
    as Telnet implementations do with a stray SE."""

    mode: Any
    suboption: bytearray | None

    def filter(self, data: bytes) -> Iterator[bytes]:
        for index in range(len(data)):
            byte = data[index:index + 1]
            if self.mode == rfc2217.M_IAC_SEEN and byte == rfc2217.SE and self.suboption is None:
                self.mode = rfc2217.M_NORMAL
                log.info("RFC 2217 client sent an SE without an SB: ignored")
                continue
            yield from super().filter(byte)


class _PortAdapter:
    """What PortManager expects of a serial port, mapped onto the owner."""

    #: Line settings a client may change; each change is recorded in the event log.
    LINE_SETTINGS = frozenset({"baudrate", "bytesize", "parity", "stopbits"})

    def __init__(self, owner: ConsoleOwner, peer: str = "") -> None:
        self._owner = owner
        self._peer = peer
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.rts = True
        self.dtr = True
        self.cts = True
        self.dsr = True
        self.ri = False
        self.cd = True
        self._break = False

    def __setattr__(self, name: str, value: Any) -> None:
        changed = name in self.LINE_SETTINGS and getattr(self, name, value) != value
        super().__setattr__(name, value)
        if changed:
            self._owner.record("rfc2217_line", peer=self._peer, setting=name, value=value,
                               line=f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}")

    @property
    def break_condition(self) -> bool:
        return self._break

    @break_condition.setter
    def break_condition(self, value: bool) -> None:
        if value and not self._break:
            asyncio.get_running_loop().create_task(self._send_break())
        self._break = bool(value)

    async def _send_break(self) -> None:
        try:
            await self._owner.send_break()
            self._owner.record("break", source="rfc2217", peer=self._peer)
        except SerconError as exc:
            log.warning("BREAK from RFC 2217 client failed: %s", exc)

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class Rfc2217Server:
    def __init__(self, owner: ConsoleOwner, port: int = 0) -> None:
        self.owner = owner
        self.host = "127.0.0.1"  # loopback only: the port has no authentication
        self.port = port
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_name: Any = writer.get_extra_info("peername")
        peer = f"{peer_name[0]}:{peer_name[1]}" if peer_name else "unknown"
        label = f"rfc2217:{peer}"
        self.owner.record("rfc2217_connect", peer=peer, authenticated=False)
        manager = PortManager(_PortAdapter(self.owner, peer), _Connection(writer))
        client: ConsoleClient | None = None
        try:
            client = self.owner.attach("interactive", label, writer, notices=True, encode=escape_iac)
        except SerconError as exc:
            self.owner.record("rfc2217_disconnect", peer=peer, reason=str(exc)[:200])
            writer.write(escape_iac(f"\r\n[sercon] {exc}\r\n".encode()))
            await writer.drain()
            writer.close()
            return
        try:
            while data := await reader.read(4096):
                payload = b"".join(manager.filter(data))
                if payload:
                    try:
                        await self.owner.client_input(client, payload)
                    except SerconError as exc:
                        client.notice(str(exc))
        except ConnectionError:
            pass
        finally:
            self.owner.detach(client)
            self.owner.record("rfc2217_disconnect", peer=peer, reason="closed")
