"""The console owner: the one process that holds a guest's serial stream, QMP and QEMU processes.

Split along its concerns: this module is the QEMU process (power on, the serial and QMP pumps,
QEMU events, stopping) and the owner's state (`emulator.state.State`, changed in one setter);
`emulator.consoles` holds the console clients and the takeover or reject policy;
`emulator.actions` the out-of-band actions (SysRq, BREAK, NMI, reset, graceful restart, power
cycle, screenshot, raw QMP, snapshots). Every byte COM1 sends goes to the serial log (whoever is
attached, across resets and power cycles) and out to the clients. QEMU events (RESET, SHUTDOWN,
GUEST_PANICKED) and QEMU exiting become entries in the event log and notices to clients; every
entry goes through `record`, which adds who asked during an operation.

Everything here runs on one asyncio loop (see `emulator.daemon`), so no locks are needed: a
client that attaches "from offset N" gets the log from N and then the live stream with no gap
and no duplicate, because both happen between two reads of the serial socket.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from . import accel as accel_mod
from . import firmware, snapshots
from .actions import SYSRQ_MAX_KEYS, Actions
from .consoles import CLIENT_BACKLOG_LIMIT, REPLAY_MAX, TAKEOVER_NOTICE, ClientMode, ConsoleClient, ConsoleClients
from .errors import ActionFailed, GuestNotRunning, SerconError, SnapshotError
from .operations import ACTOR
from .qemu_args import find_qemu, qemu_args
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


class SerialProtocol(asyncio.StreamReaderProtocol):
    """COM1's socket. QEMU writes the UART's output a few bytes at a time, so the owner handles
    thousands of small reads a second in a burst; each goes straight to `on_data` from the event
    loop's read callback, instead of through a StreamReader, a future and a task switch. Writes
    to the guest keep the StreamWriter (and its drain) over the same transport."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.unused_reader = asyncio.StreamReader()
        super().__init__(self.unused_reader)
        self._on_data = on_data

    def data_received(self, data: bytes) -> None:
        self._on_data(data)


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL if the owner dies, so no orphan QEMU keeps running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


class ConsoleOwner(ConsoleClients, Actions):
    """One guest: its QEMU process (here), its console clients (`emulator.consoles`) and its actions
    (`emulator.actions`)."""

    def __init__(self, name: str, spec: GuestSpec, folder: Path) -> None:
        spec.validate()
        self.name = name
        self.spec = spec
        self.folder = folder
        private_dir(folder)
        self.serial_log = SerialLog(folder / "serial.log")
        self.events = EventLog(folder / "events.jsonl")
        self.qemu_log_path = folder / "qemu.log"
        self.state = State.STOPPED
        self.boot = 0
        self.accel = ""
        self.accel_reason = ""
        self.clients: set[ConsoleClient] = set()
        self.interactive: ConsoleClient | None = None
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self._serial_writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._expected_exit = False
        self._last_reset = 0.0
        self._reset_reason: str | None = None
        self._panic_tail = b""
        self._panicked_boot = -1
        self.exit_status: int | None = None
        self.stopped = asyncio.Event()
        #: Metadata of the snapshot the current QEMU was loaded from, if any.
        self.snapshot_meta: dict[str, Any] | None = None
        #: The snapshot RAM file the current QEMU maps private (None: RAM in a shared memfd).
        self._ram_file: str | None = None

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

    async def power_on(self, reason: str = "power on", snapshot: str | None = None) -> None:
        """Start a QEMU process for this guest (a new boot, with the same console).

        With `snapshot`, the new process loads that saved state instead of booting.
        """
        if self.proc is not None and self.proc.returncode is None:
            raise SerconError("QEMU is already running for this guest")
        qemu = find_qemu()
        self._set_state(State.STARTING)
        loop = asyncio.get_running_loop()
        if not self.accel:
            self.accel, self.accel_reason = await loop.run_in_executor(
                None, accel_mod.choose_accel, self.spec.accel, qemu, self.spec.kernel
            )
            log.info("%s: accelerator %s (%s)", self.name, self.accel, self.accel_reason)
        state_file = None
        self._ram_file = None
        backing: tuple[str, str | None] | None = (self.spec.disk, self.spec.disk_format) if self.spec.disk else None
        if snapshot is not None:
            snap = snapshots.find(snapshot, snapshots.snapshot_key(self.spec, self.accel, qemu))
            state_file = snap.state.open("rb")
            self.snapshot_meta = snap.meta
            self._ram_file = str(snap.ram) if snap.ram else None
            if (snap.folder / "disk.qcow2").exists():
                backing = (str(snap.folder / "disk.qcow2"), "qcow2")
        overlay = None
        if self.spec.disk and self.spec.disk_snapshot and backing is not None:
            overlay = await self._make_overlay(*backing)
        vars_file = None
        if self.spec.firmware_vars:  # UEFI: this power-on's own copy of the variable store
            saved_vars = snap.folder / firmware.VARS_COPY if snapshot is not None else None
            vars_file = firmware.vars_copy(self.spec.firmware_vars, self.folder, saved_vars)
        serial_ours, serial_qemu = socket.socketpair()
        qmp_ours, qmp_qemu = socket.socketpair()
        args = qemu_args(
            self.spec, accel=self.accel, serial_fd=serial_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
            name=self.name, qemu=qemu, disk_overlay=str(overlay) if overlay else None, ram_file=self._ram_file,
            firmware_vars=str(vars_file) if vars_file else None,
        )
        pass_fds = [serial_qemu.fileno(), qmp_qemu.fileno()]
        incoming = f"fd:{state_file.fileno()}" if state_file is not None else ""
        if state_file is not None:
            # With the RAM in a file, the stream needs x-ignore-shared set first: defer, then load.
            args += ["-incoming", "defer" if self._ram_file else incoming]
            pass_fds.append(state_file.fileno())
        with self.qemu_log_path.open("ab") as qlog:
            qlog.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {reason}: {' '.join(args)}\n".encode())
            qlog.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                pass_fds=pass_fds, preexec_fn=_die_with_parent,
            )
        serial_qemu.close()
        qmp_qemu.close()
        if state_file is not None:
            state_file.close()
        self._expected_exit = False
        self.exit_status = None
        self.boot += 1
        self._last_reset = time.monotonic()
        self.record("power_on", reason=reason, qemu_pid=self.proc.pid, accel=self.accel,
                    accel_reason=self.accel_reason, snapshot=snapshot)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(lambda: SerialProtocol(self._fan_out), sock=serial_ours)
        self._serial_writer = asyncio.StreamWriter(transport, protocol, protocol.unused_reader, loop)
        proc = self.proc
        self._tasks = [
            asyncio.create_task(self._watch_process(proc), name="process"),
        ]
        self.qmp = QMPClient(self.name)
        try:
            await asyncio.wait_for(self.qmp.connect(qmp_ours), timeout=30)
        except (TimeoutError, QMPError, OSError) as exc:
            await self._kill_qemu()
            raise SerconError(
                f"QEMU did not answer on QMP ({exc}); its own messages:\n{self._qemu_log_tail()}"
            ) from exc
        self._tasks.append(asyncio.create_task(self._pump_qmp_events(self.qmp), name="qmp-events"))
        if snapshot is not None:
            if self._ram_file:
                await self._set_ignore_shared(True)
                await self._qmp("migrate-incoming", {"uri": incoming})
            await self._wait_restored(snapshot)
        self._set_state(State.RUNNING)

    async def _set_ignore_shared(self, on: bool) -> None:
        """x-ignore-shared: migration leaves shared RAM (the memfd) out of the stream."""
        await self._qmp("migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": on}]})

    def _ram_memfd(self) -> Path:
        """QEMU's memfd holding the guest RAM, as /proc/PID/fd/N."""
        assert self.proc is not None
        fds = Path(f"/proc/{self.proc.pid}/fd")
        size = self.spec.memory_mb << 20
        for fd in fds.iterdir():
            try:  # QEMU names the memfd after the backend's type; the size tells the RAM's apart
                if os.readlink(fd).startswith("/memfd:memory-backend-memfd") and fd.stat().st_size == size:
                    return fd
            except OSError:
                continue
        raise ActionFailed(f"the RAM of {self.name} is not in a memfd (QEMU {self.proc.pid})")

    async def _make_overlay(self, backing: str, backing_format: str | None) -> Path:
        """A fresh qcow2 overlay in the guest folder: the guest's writes never reach `backing`."""
        overlay = self.folder / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        if not backing_format:  # qemu-img insists on knowing it; qcow2 files say so in their first bytes
            with open(backing, "rb") as fh:
                backing_format = "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
        command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format]
        proc = await asyncio.create_subprocess_exec(
            *command, str(overlay), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SerconError(f"qemu-img could not make an overlay on {backing} (apt-get install qemu-utils): "
                              f"{out.decode(errors='replace').strip()}")
        return overlay

    async def _wait_restored(self, snapshot: str) -> None:
        """QEMU loads the state, then runs the guest by itself; a bad stream makes it exit."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.returncode is not None:
                break
            try:
                status = await self._qmp("query-status")
            except ActionFailed:
                break
            if status.get("status") == "paused":
                # The state was saved from a stopped guest (save_snapshot stops it first), and
                # QEMU keeps that run state after loading: start it.
                await self._qmp("cont")
                continue
            if status.get("status") == "running":
                self.record("restored", snapshot=snapshot)
                return
            await asyncio.sleep(0.005)
        await self._kill_qemu(graceful=False)
        raise SnapshotError(
            f"QEMU could not load snapshot {snapshot!r} (it is corrupt or foreign; it will be rebuilt):\n"
            f"{self._qemu_log_tail(4)}"
        )

    def _qemu_log_tail(self, lines: int = 10) -> str:
        try:
            text = self.qemu_log_path.read_text(errors="replace")
        except OSError:
            return "(no qemu.log)"
        return "\n".join(text.splitlines()[-lines:])

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

    async def _pump_qmp_events(self, qmp: QMPClient) -> None:
        try:
            async for event in qmp.events:
                data = event.get("data")
                self._on_qmp_event(str(event["event"]), data if isinstance(data, dict) else {})
        except (QMPError, EOFError, OSError, asyncio.CancelledError):
            return

    def _on_qmp_event(self, name: str, data: dict[str, Any]) -> None:
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
        elif name == "STOP":
            if self.state == "running":
                self._set_state(State.PAUSED)
        elif name == "RESUME":
            self._set_state(State.RUNNING)

    async def _watch_process(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if proc is not self.proc:
            return
        self.exit_status = code
        if self._serial_writer is not None:
            self._serial_writer.close()
            self._serial_writer = None
        if self._expected_exit:
            return
        self._set_state(State.DEAD)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        self.record("qemu_exited", how=how, expected=False, qemu_log=self._qemu_log_tail(5))
        self._notice_all(f"QEMU exited unexpectedly ({how}); the serial log is kept. Power cycle to start again.")

    async def _kill_qemu(self, graceful: bool = True) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._expected_exit = True
        if graceful and self.qmp is not None:
            try:
                await asyncio.wait_for(self.qmp.execute("quit"), timeout=5)
            except (TimeoutError, QMPError, EOFError, OSError):
                pass
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _close_qmp(self) -> None:
        if self.qmp is not None:
            try:
                await self.qmp.disconnect()
            except (QMPError, EOFError, OSError):
                pass  # QEMU already gone: qemu.qmp raises EOFError here
            self.qmp = None

    async def _stop_qemu(self) -> None:
        await self._kill_qemu()
        await self._close_qmp()
        # Let the serial pump drain the last bytes QEMU wrote before we forget the socket.
        for task in self._tasks:
            if task.get_name() == "serial":
                try:
                    await asyncio.wait_for(task, timeout=2)
                except TimeoutError:
                    pass
            task.cancel()
        self._tasks = []

    # ------------------------------------------------------------------ actions

    def _require_running(self) -> QMPClient:
        if self.state == "dead":
            raise GuestNotRunning(
                f"guest {self.name}: QEMU exited unexpectedly ({self._exit_text()}); power cycle it to start again. "
                f"Last console lines:\n{tail_lines(self.serial_log.path)}"
            )
        if self.qmp is None or self.proc is None or self.proc.returncode is not None:
            raise GuestNotRunning(f"guest {self.name} is not running (state {self.state})")
        return self.qmp

    def _exit_text(self) -> str:
        code = self.exit_status
        if code is None:
            return "unknown status"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    async def _qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        qmp = self._require_running()
        try:
            return await asyncio.wait_for(qmp.execute(command, args), timeout=30)
        except (TimeoutError, QMPError, EOFError, OSError) as exc:
            raise ActionFailed(f"QMP {command} failed: {exc}") from exc

    async def stop(self) -> None:
        """Power off for good and end the owner."""
        if self.state != "stopped":
            self.record("stop")
        await self._stop_qemu()
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
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "qemu_pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
            "owner_pid": os.getpid(),
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

