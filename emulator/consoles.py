"""A guest's console clients: who is attached, the takeover or reject policy, keystrokes to COM1.

Every client gets the guest's bytes; `interactive` is the one human session (takeover or reject),
`harness` types without taking over anyone, `read` never types. Clients that asked for events
(the gateway) get framed streams (`emulator.protocol`); the others get the raw bytes, with the
takeover notice as text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import settings
from .errors import ConsoleBusy, GuestNotRunning
from .protocol import encode_data, encode_event
from .serial_log import read_log
from .state import State
from .trust import scrub_label

if TYPE_CHECKING:
    from .backend import Backend
    from .serial_log import SerialLog
    from .spec import GuestSpec

log = logging.getLogger("sercon.owner")

ClientMode = Literal["read", "interactive", "harness"]
#: A console client whose socket has this much unsent data is dropped (it can re-read the log);
#: SERCON_CLIENT_BACKLOG (bytes) sets it for the owner processes started with it in their environment.
CLIENT_BACKLOG_LIMIT = settings.number("SERCON_CLIENT_BACKLOG")
#: A client attaching "from offset N" gets at most this much of the log replayed (the rest is in the log).
REPLAY_MAX = 1024 * 1024
TAKEOVER_NOTICE = (
    "\r\n[sercon] The serial console connection was closed: {who} took over the console. "
    "Your session in the guest continues. To reconnect, press Enter.\r\n"
)


@dataclass(eq=False)
class ConsoleClient:
    """One attached console connection."""

    mode: ClientMode
    label: str
    writer: asyncio.StreamWriter
    notices: bool = False
    #: Applied to everything sent (the RFC 2217 server doubles IAC bytes here).
    encode: Callable[[bytes], bytes] | None = None
    #: Framed stream (see emulator.protocol): guest bytes in data frames, session changes as events.
    framed: bool = False
    connected_at: float = field(default_factory=time.time)

    def send(self, data: bytes) -> bool:
        """Queue guest output; False if the client is gone or hopelessly behind."""
        if self.writer.is_closing():
            return False
        transport = self.writer.transport
        if transport.get_write_buffer_size() > CLIENT_BACKLOG_LIMIT:
            return False
        if self.framed:
            self.writer.write(encode_data(data))
        else:
            self.writer.write(self.encode(data) if self.encode else data)
        return True

    def event(self, event: dict[str, Any]) -> None:
        """A session change: an event frame for framed clients, a text notice for raw ones (if asked)."""
        if self.writer.is_closing():
            return
        if self.framed:
            self.writer.write(encode_event(event))
        elif event.get("type") == "closed" and event.get("reason") == "takeover":
            text = TAKEOVER_NOTICE.format(who=event.get("by", "someone")).encode()
            self.writer.write(self.encode(text) if self.encode else text)
        elif self.notices and event.get("type") == "notice":
            text = f"\r\n[sercon] {event.get('text', '')}\r\n".encode()
            self.writer.write(self.encode(text) if self.encode else text)

    def notice(self, text: str) -> None:
        self.event({"type": "notice", "text": text})

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class ConsoleClients:
    """The console clients of a guest's owner: attach (with replay and the takeover or reject
    policy), detach, keystrokes to COM1, notices. Mixed into `emulator.owner.ConsoleOwner`."""

    if TYPE_CHECKING:
        name: str
        spec: GuestSpec
        state: State
        serial_log: SerialLog
        clients: set[ConsoleClient]
        interactive: ConsoleClient | None
        backend: Backend

        def record(self, event: str, **fields: Any) -> dict[str, Any]: ...

    def _notice_all(self, text: str) -> None:
        for client in list(self.clients):
            client.notice(text)

    async def _write_serial(self, data: bytes) -> None:
        if not self.backend.running or self.state in ("dead", "stopped"):
            raise GuestNotRunning(f"guest {self.name} is not running (state {self.state})")
        await self.backend.write_serial(data)

    def attach(
        self, mode: ClientMode, label: str, writer: asyncio.StreamWriter, *,
        from_offset: int | None = None, notices: bool = False, takeover: bool | None = None, events: bool = False,
        replay_max: int | None = None,
        greeting: Callable[[int, int], bytes] | None = None, encode: Callable[[bytes], bytes] | None = None,
    ) -> ConsoleClient:
        """Register a console client; replays the log from `from_offset` first (negative: from the end).

        The replay is at most `REPLAY_MAX` bytes (the newest); `greeting(live_offset, replay_start)`
        gives bytes sent before anything else (the console socket's reply line).
        """
        label = scrub_label(label)
        client = ConsoleClient(mode=mode, label=label, writer=writer, notices=notices, encode=encode, framed=events)
        if mode == "interactive":
            current = self.interactive
            if current is not None and not current.writer.is_closing():
                policy_takeover = self.spec.policy == "takeover" if takeover is None else takeover
                if not policy_takeover:
                    self.record("console_rejected", client=label, holder=current.label)
                    raise ConsoleBusy(
                        f"the console of {self.name} is in use by {current.label} and the policy is reject; "
                        "try again when they detach, or attach read-only"
                    )
                current.event({"type": "closed", "reason": "takeover", "by": label})
                self.record("console_takeover", client=label, previous=current.label)
                self._drop_client(current, "taken over")
            self.interactive = client
        live = self.serial_log.size
        replay_start = live
        if from_offset is not None:
            wanted = from_offset if from_offset >= 0 else live + from_offset
            cap = REPLAY_MAX if replay_max is None else min(REPLAY_MAX, replay_max)
            replay_start = min(live, max(0, wanted, live - cap))
        if greeting is not None:
            writer.write(greeting(live, replay_start))  # the handshake reply: a line, never framed
        if replay_start < live:
            replay = read_log(self.serial_log.path, replay_start, live - replay_start)
            if replay.data:
                client.send(replay.data)
        self.clients.add(client)
        self.record("console_attach", client=label, mode=mode)
        return client

    def detach(self, client: ConsoleClient) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.record("console_detach", client=client.label, mode=client.mode)
        if self.interactive is client:
            self.interactive = None
        client.close()

    def _drop_client(self, client: ConsoleClient, why: str) -> None:
        log.info("%s: dropping console client %s: %s", self.name, client.label, why)
        self.detach(client)

    async def client_input(self, client: ConsoleClient, data: bytes) -> None:
        if client.mode == "read":
            return
        if client.mode == "interactive" and self.interactive is not client:
            return
        await self._write_serial(data)
