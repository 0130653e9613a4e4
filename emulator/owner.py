"""The console owner: the one process that holds a guest's serial stream, its QEMU and its clients.

Split along its concerns: this module is the owner's state (`emulator.state.State`, changed in
one setter), power-on, and what QEMU reports (bytes, events, an unexpected end), whichever
backend runs it (`emulator.backend`: a local process, or a libvirt domain on any host);
`emulator.consoles` holds the console clients and the takeover or reject policy;
`emulator.actions` the out-of-band actions (SysRq, BREAK, NMI, reset, graceful restart, power
cycle, screenshot, raw QMP, snapshots). Every byte COM1 sends goes to the serial log (whoever is
attached, across resets and power cycles) and out to the clients. QEMU events (RESET, SHUTDOWN,
GUEST_PANICKED) and QEMU exiting become entries in the event log and notices to clients; every
entry goes through `record`, which adds who asked during an operation.

Everything here runs on one asyncio loop (see `emulator.daemon`), so no locks are needed: a
client that attaches "from offset N" gets the log from N and then the live stream with no gap
and no duplicate, because both happen between two reads of COM1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import event_loop, snapshots
from .actions import SYSRQ_MAX_KEYS, Actions
from .backend import Backend, backend_for
from .consoles import CLIENT_BACKLOG_LIMIT, REPLAY_MAX, TAKEOVER_NOTICE, ClientMode, ConsoleClient, ConsoleClients
from .errors import GuestNotRunning, SerconError
from .host_uri import display
from .operations import ACTOR
from .serial_log import EventLog, SerialLog, tail_lines
from .spec import GuestSpec
from .state import State
from .trust import private_dir

__all__ = ["CLIENT_BACKLOG_LIMIT", "REPLAY_MAX", "SYSRQ_MAX_KEYS", "TAKEOVER_NOTICE", "ClientMode", "ConsoleClient",
           "ConsoleOwner", "State"]

log = logging.getLogger("sercon.owner")


#: A guest reboot emits 2-3 RESET events within ~60 ms (spread wider on a loaded host): one boot.
RESET_DEBOUNCE_S = 1.5
PANIC_TEXT = b"Kernel panic - not syncing"


class ConsoleOwner(ConsoleClients, Actions):
    """One guest: its QEMU (through `self.backend`, here or on a libvirt host), its console clients
    (`emulator.consoles`) and its actions (`emulator.actions`)."""

    def __init__(self, name: str, spec: GuestSpec, folder: Path) -> None:
        spec.validate()
        self.name = name
        self.spec = spec
        self.folder = folder
        private_dir(folder)
        self.serial_log = SerialLog(folder / "serial.log")
        self.events = EventLog(folder / "events.jsonl")
        self.state = State.STOPPED
        self.boot = 0
        self.clients: set[ConsoleClient] = set()
        self.interactive: ConsoleClient | None = None
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.backend: Backend = backend_for(name, spec, folder, self)
        self._listeners: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._last_reset = 0.0
        self._reset_reason: str | None = None
        self._panic_tail = b""
        self._panicked_boot = -1
        self.stopped = asyncio.Event()
        #: Metadata of the snapshot the current QEMU was loaded from, if any.
        self.snapshot_meta: dict[str, Any] | None = None

    @property
    def accel(self) -> str:
        return self.backend.accel

    # ----------------------------------------------------------------- events

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """The one way anything is recorded: the event log (with who asked, during an operation),
        the subscribers, the owner log."""
        actor = ACTOR.get()
        if actor is not None and "by" not in fields:
            fields["by"] = actor
        record = self.events.write(event, self.serial_log.size, name=self.name, boot=self.boot, **fields)
        for queue in list(self.subscribers):
            queue.put_nowait(record)
        log.info("%s: %s %s", self.name, event, fields)
        return record

    def _set_state(self, state: State) -> None:
        """The one place the state changes."""
        if state != self.state:
            log.info("%s: state %s -> %s", self.name, self.state, state)
            self.state = state

    # ------------------------------------------------------------ power / QEMU

    async def power_on(self, reason: str = "power on", snapshot: str | None = None) -> snapshots.Snapshot | None:
        """Start a QEMU for this guest (a new boot, with the same console).

        With `snapshot`, the new QEMU loads that saved state instead of booting; returns it.
        """
        if self.backend.running:
            raise SerconError("QEMU is already running for this guest")
        self._set_state(State.STARTING)
        snap = None
        if snapshot is not None:
            if not self.backend.accel:  # the key names the accelerator: choose it first
                await self.backend.choose_accel()
            snap = snapshots.find(snapshot, await self._snapshot_key())
            self.snapshot_meta = snap.meta
        try:
            await self.backend.power_on(reason, snap)
        except BaseException:
            if self.state == State.STARTING:
                self._set_state(State.STOPPED)
            raise
        if snapshot is not None:
            self.record("restored", snapshot=snapshot)
        self._set_state(State.RUNNING)
        return snap

    async def _snapshot_key(self) -> str:
        return snapshots.snapshot_key(self.spec, self.backend.accel, await self.backend.hypervisor())

    def on_powered_on(self, **fields: Any) -> None:
        """The backend started a QEMU: a new boot, before its first byte or event."""
        self.boot += 1
        self._last_reset = time.monotonic()
        self.record("power_on", accel=self.backend.accel,
                    accel_reason=self.backend.accel_reason, backend=self.backend.kind,
                    host=display(self.spec.host) if self.spec.host else None, **fields)

    def on_serial(self, data: bytes) -> None:
        self._fan_out(data)

    def _fan_out(self, data: bytes) -> None:
        """Guest output, as it arrives: into the serial log, past the panic watch, to every client."""
        self.serial_log.append(data)
        self._watch_for_panic_text(data)
        for client in list(self.clients):
            if not client.send(data):
                client.event({"type": "closed", "reason": "dropped",
                              "text": "this console fell too far behind; the serial log has every byte"})
                self._drop_client(client, "client too slow or gone")

    def _watch_for_panic_text(self, data: bytes) -> None:
        window = self._panic_tail + data
        self._panic_tail = window[-len(PANIC_TEXT):]
        if PANIC_TEXT in window and self._panicked_boot != self.boot:
            self._panicked_boot = self.boot
            self.record("panic", source="console", detail="Kernel panic - not syncing")
            self._notice_all("guest kernel panicked")

    @contextlib.contextmanager
    def listener(self, event: str) -> Iterator[asyncio.Future[dict[str, Any]]]:
        """A future for the next QEMU `event`, registered before the command that causes it runs,
        so the event cannot slip past (whichever backend delivers it)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        entry = (event, future)
        self._listeners.append(entry)
        try:
            yield future
        finally:
            self._listeners.remove(entry)

    def on_qemu_event(self, name: str, data: dict[str, Any]) -> None:
        """QEMU's events under their QMP names, from either backend."""
        for wanted, future in self._listeners:
            if wanted == name and not future.done():
                future.set_result(data)
        if name == "RESET":
            now = time.monotonic()
            if now - self._last_reset < RESET_DEBOUNCE_S:
                return
            self._last_reset = now
            reason = self._reset_reason or ("guest reboot" if data.get("guest") else data.get("reason", "reset"))
            self._reset_reason = None
            self.boot += 1
            self.record("boot", reason=reason, qemu_reason=data.get("reason"))
            self._notice_all(f"{reason}: boot {self.boot}")
        elif name == "SHUTDOWN":
            if data.get("guest"):
                self._set_state(State.OFF)
                self.record("guest_poweroff", qemu_reason=data.get("reason"))
                self._notice_all("the guest powered itself off")
        elif name == "GUEST_PANICKED":
            if self._panicked_boot != self.boot:
                self._panicked_boot = self.boot
                self.record("panic", source="pvpanic", detail=data.get("action"))
                self._notice_all("guest kernel panicked (pvpanic)")
        elif name == "WATCHDOG":
            self.record("watchdog", action=data.get("action"))
            self._notice_all(f"the guest's watchdog fired ({data.get('action')})")
        elif name == "STOP":
            if self.state == "running":
                self._set_state(State.PAUSED)
        elif name == "RESUME":
            if self.state != State.STARTING:
                self._set_state(State.RUNNING)

    def on_exit(self, how: str, detail: str) -> None:
        """QEMU ended without being asked to (it crashed, was killed, or its domain was destroyed)."""
        self._set_state(State.DEAD)
        self.record("qemu_exited", how=how, expected=False, qemu_log=detail)
        self._notice_all(f"QEMU exited unexpectedly ({how}); the serial log is kept. Power cycle to start again.")

    async def _stop_qemu(self, graceful: bool = True) -> None:
        await self.backend.stop(graceful)

    # ------------------------------------------------------------------ actions

    def _require_running(self) -> Backend:
        if self.state == "dead":
            raise GuestNotRunning(
                f"guest {self.name}: QEMU exited unexpectedly ({self.backend.exit_text()}); power cycle it to "
                f"start again. Last console lines:\n{tail_lines(self.serial_log.path)}"
            )
        if not self.backend.running:
            raise GuestNotRunning(f"guest {self.name} is not running (state {self.state})")
        return self.backend

    async def _qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return await self._require_running().qmp(command, args)

    async def stop(self) -> None:
        """Power off for good and end the owner."""
        if self.state != "stopped":
            self.record("stop")
        await self.backend.close()
        self._set_state(State.STOPPED)
        for client in list(self.clients):
            client.notice("the guest was shut down (sercon down)")
            client.event({"type": "closed", "reason": "stopped"})
            client.close()
        self.clients.clear()
        self.serial_log.close()
        self.stopped.set()

    # -------------------------------------------------------------------- info

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "boot": self.boot,
            "accel": self.backend.accel,
            "accel_reason": self.backend.accel_reason,
            "qemu_pid": None,
            **self.backend.info(),
            "owner_pid": os.getpid(),
            "event_loop": event_loop.running(),
            "folder": str(self.folder),
            "serial_log": str(self.serial_log.path),
            "events_log": str(self.events.path),
            "log_size": self.serial_log.size,
            "policy": self.spec.policy,
            "interactive": self.interactive.label if self.interactive else None,
            "clients": sorted(f"{c.label} ({c.mode})" for c in self.clients),
            "image": self.spec.image,
            "snapshot": self.snapshot_meta,
            # The guest password stays in spec.json (0600): info goes to any client of the control socket.
            "spec": {**self.spec.__dict__, "password": None},
        }
