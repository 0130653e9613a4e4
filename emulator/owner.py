"""The console owner: the one process that holds a guest's serial stream, QMP and QEMU processes.

It writes every byte COM1 sends to the serial log (whoever is attached, across resets and power
cycles), fans the stream out to console clients, forwards their keystrokes under the takeover or
reject policy, and performs the out-of-band actions: SysRq (BREAK then key), NMI, reset, graceful
restart, power cycle, screenshot. QEMU events (RESET, SHUTDOWN, GUEST_PANICKED) and QEMU exiting
become entries in the event log and notices to clients.

Everything here runs on one asyncio loop (see `emulator.daemon`), so no locks are needed: a
client that attaches "from offset N" gets the log from N and then the live stream with no gap
and no duplicate, because both happen between two reads of the serial socket.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from . import accel as accel_mod
from . import firmware, snapshots
from .errors import ActionFailed, ConsoleBusy, GuestNotRunning, SerconError, SnapshotError
from .qemu_args import SERIAL_ID, find_qemu, qemu_args
from .serial_log import EventLog, SerialLog, read_log, tail_lines
from .spec import GuestSpec
from .sysrq import parse_keys

log = logging.getLogger("sercon.owner")

State = Literal["starting", "running", "paused", "off", "dead", "stopped"]
ClientMode = Literal["read", "interactive", "harness"]

#: A guest reboot emits 2-3 RESET events within ~60 ms (spread wider on a loaded host): one boot.
RESET_DEBOUNCE_S = 1.5
#: A console client whose socket has this much unsent data is dropped (it can re-read the log).
CLIENT_BACKLOG_LIMIT = 16 * 1024 * 1024
PANIC_TEXT = b"Kernel panic - not syncing"
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
    connected_at: float = field(default_factory=time.time)

    def send(self, data: bytes) -> bool:
        """Queue data; False if the client is gone or hopelessly behind."""
        if self.writer.is_closing():
            return False
        transport = self.writer.transport
        if transport.get_write_buffer_size() > CLIENT_BACKLOG_LIMIT:
            return False
        self.writer.write(self.encode(data) if self.encode else data)
        return True

    def notice(self, text: str) -> None:
        if self.notices:
            self.send(f"\r\n[sercon] {text}\r\n".encode())

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL if the owner dies, so no orphan QEMU keeps running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


class ConsoleOwner:
    def __init__(self, name: str, spec: GuestSpec, folder: Path) -> None:
        spec.validate()
        self.name = name
        self.spec = spec
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.serial_log = SerialLog(folder / "serial.log")
        self.events = EventLog(folder / "events.jsonl")
        self.qemu_log_path = folder / "qemu.log"
        self.state: State = "stopped"
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
        self._shutdown_seen = asyncio.Event()
        self._reset_seen = asyncio.Event()
        self.exit_status: int | None = None
        self.stopped = asyncio.Event()
        #: Metadata of the snapshot the current QEMU was loaded from, if any.
        self.snapshot_meta: dict[str, Any] | None = None

    # ----------------------------------------------------------------- events

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        record = self.events.write(event, self.serial_log.size, name=self.name, boot=self.boot, **fields)
        for queue in list(self.subscribers):
            queue.put_nowait(record)
        log.info("%s: %s %s", self.name, event, fields)
        return record

    def _notice_all(self, text: str) -> None:
        for client in list(self.clients):
            client.notice(text)

    # ------------------------------------------------------------ power / QEMU

    async def power_on(self, reason: str = "power on", snapshot: str | None = None) -> None:
        """Start a QEMU process for this guest (a new boot, with the same console).

        With `snapshot`, the new process loads that saved state instead of booting.
        """
        if self.proc is not None and self.proc.returncode is None:
            raise SerconError("QEMU is already running for this guest")
        qemu = find_qemu()
        self.state = "starting"
        loop = asyncio.get_running_loop()
        if not self.accel:
            self.accel, self.accel_reason = await loop.run_in_executor(
                None, accel_mod.choose_accel, self.spec.accel, qemu, self.spec.kernel
            )
            log.info("%s: accelerator %s (%s)", self.name, self.accel, self.accel_reason)
        state_file = None
        backing: tuple[str, str | None] | None = (self.spec.disk, self.spec.disk_format) if self.spec.disk else None
        if snapshot is not None:
            snap = snapshots.find(snapshot, snapshots.snapshot_key(self.spec, self.accel, qemu))
            state_file = snap.state.open("rb")
            self.snapshot_meta = snap.meta
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
            name=self.name, qemu=qemu, disk_overlay=str(overlay) if overlay else None,
            firmware_vars=str(vars_file) if vars_file else None,
        )
        pass_fds = [serial_qemu.fileno(), qmp_qemu.fileno()]
        if state_file is not None:
            args += ["-incoming", f"fd:{state_file.fileno()}"]
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
        reader, self._serial_writer = await asyncio.open_connection(sock=serial_ours)
        proc = self.proc
        self._tasks = [
            asyncio.create_task(self._pump_serial(reader), name="serial"),
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
            await self._wait_restored(snapshot)
        self.state = "running"

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

    async def save_snapshot(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save the running guest's whole state as snapshot `name`; the guest then carries on."""
        self._require_running()
        qemu = find_qemu()
        key = snapshots.snapshot_key(self.spec, self.accel, qemu)
        tmp = snapshots.prepare(name, key)
        await self._qmp("stop")
        try:
            target = tmp / "state.bin"
            await self._qmp("migrate", {"uri": f"exec:cat > '{target}'"})
            while True:
                status = await self._qmp("query-migrate")
                if status.get("status") == "completed":
                    break
                if status.get("status") in ("failed", "cancelled"):
                    raise ActionFailed(f"saving snapshot {name!r} failed: {status.get('error-desc', status)}")
                await asyncio.sleep(0.01)
            overlay = self.folder / "overlay.qcow2"
            if self.spec.disk and not (self.spec.disk_snapshot and overlay.exists()):
                raise ActionFailed(
                    f"snapshot of {self.name}: its disk is written in place; snapshots of disk guests need "
                    "disk_snapshot=True (writes to a throw-away overlay that the snapshot can keep)"
                )
            if overlay.exists() and self.spec.disk:
                # Migration has completed: QEMU flushed and released the disk, so a copy is consistent.
                shutil.copyfile(overlay, tmp / "disk.qcow2")
            if self.spec.firmware_vars:  # the UEFI variables go with the state, as the disk does
                shutil.copyfile(self.folder / firmware.VARS_COPY, tmp / firmware.VARS_COPY)
            snap = snapshots.commit(tmp, name, key, {
                "boot": self.boot, "log_offset": self.serial_log.size, "image": self.spec.image,
                "guest": self.name, "extra": extra or {},
            })
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            await self._qmp("cont")
        self.record("snapshot_saved", snapshot=name, size=snap.meta["size"])
        return snap.meta

    async def restore_snapshot(self, name: str) -> None:
        """Replace this guest's QEMU by one loaded from snapshot `name`; clients stay attached."""
        self.record("power_off", reason=f"restore {name}")
        await self._stop_qemu()
        await self.power_on(reason=f"restore {name}", snapshot=name)
        self._notice_all(f"restored from snapshot {name}")

    def _qemu_log_tail(self, lines: int = 10) -> str:
        try:
            text = self.qemu_log_path.read_text(errors="replace")
        except OSError:
            return "(no qemu.log)"
        return "\n".join(text.splitlines()[-lines:])

    async def _pump_serial(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                return
            self.serial_log.append(data)
            self._watch_for_panic_text(data)
            for client in list(self.clients):
                if not client.send(data):
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
            self._reset_seen.set()
            if now - self._last_reset < RESET_DEBOUNCE_S:
                return
            self._last_reset = now
            reason = self._reset_reason or ("guest reboot" if data.get("guest") else data.get("reason", "reset"))
            self._reset_reason = None
            self.boot += 1
            self.record("boot", reason=reason, qemu_reason=data.get("reason"))
            self._notice_all(f"{reason}: boot {self.boot}")
        elif name == "SHUTDOWN":
            self._shutdown_seen.set()
            if data.get("guest"):
                self.state = "off"
                self.record("guest_poweroff", qemu_reason=data.get("reason"))
                self._notice_all("the guest powered itself off")
        elif name == "GUEST_PANICKED":
            if self._panicked_boot != self.boot:
                self._panicked_boot = self.boot
                self.record("panic", source="pvpanic", detail=data.get("action"))
                self._notice_all("guest kernel panicked (pvpanic)")
        elif name == "STOP":
            if self.state == "running":
                self.state = "paused"
        elif name == "RESUME":
            self.state = "running"

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
        self.state = "dead"
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

    async def sysrq(self, keys: str, interval: float = 0.1) -> list[str]:
        """BREAK then key, once per key; `interval` seconds between keys of a sequence."""
        sequence = parse_keys(keys)
        self._require_running()
        for i, key in enumerate(sequence):
            if i:
                await asyncio.sleep(interval)
            await self.send_break()
            await self._write_serial(key.encode())
        self.record("sysrq", keys="".join(sequence))
        return sequence

    async def send_break(self) -> None:
        """A BREAK condition on the UART (what a SysRq key follows; RFC 2217 clients send these)."""
        await self._qmp("chardev-send-break", {"id": SERIAL_ID})

    async def nmi(self) -> None:
        await self._qmp("inject-nmi")
        self.record("nmi")

    async def reset(self) -> None:
        """Hard reset (QMP system_reset): the console stays connected and shows the new boot."""
        self._require_running()
        self._reset_reason = "reset (hard, from sercon)"
        was_off = self.state == "off"
        self._reset_seen.clear()
        await self._qmp("system_reset")
        if was_off:
            await self._resume_after_reset()

    async def _resume_after_reset(self) -> None:
        # After a guest poweroff (-no-shutdown) QEMU refuses `cont` until a reset has happened.
        try:
            await asyncio.wait_for(self._reset_seen.wait(), timeout=10)
        except TimeoutError as exc:
            raise ActionFailed("no RESET event after system_reset") from exc
        await self._qmp("cont")
        self.state = "running"

    async def restart(self, timeout: float = 60.0) -> None:
        """Graceful restart: ACPI power button, wait for the guest to power off, then power on.

        Clients stay attached; they see the shutdown and the new boot.
        """
        if self.state == "dead" or self.state == "stopped":
            await self.power_cycle(reason="restart (QEMU was not running)")
            return
        self._require_running()
        if self.state != "off":
            self._shutdown_seen.clear()
            self.record("restart_requested", timeout=timeout)
            await self._qmp("system_powerdown")
            try:
                await asyncio.wait_for(self._shutdown_seen.wait(), timeout=timeout)
            except TimeoutError as exc:
                raise ActionFailed(
                    f"guest {self.name} did not power off within {timeout:.0f}s of the ACPI power button "
                    "(it needs the ACPI button driver and acpid or systemd-logind); use reset for a hard reset"
                ) from exc
        self._reset_reason = "restart (graceful)"
        self._reset_seen.clear()
        await self._qmp("system_reset")
        await self._resume_after_reset()

    async def power_cycle(self, reason: str = "power cycle") -> None:
        """End the QEMU process and start a new one; clients and the log carry on."""
        self.record("power_off", reason=reason)
        self._notice_all(f"{reason}: powering off")
        await self._stop_qemu()
        await self.power_on(reason=reason)
        self._notice_all(f"{reason}: powered on, boot {self.boot}")

    async def screenshot(self, path: str) -> str:
        target = str(Path(path).resolve())
        await self._qmp("screendump", {"filename": target, "format": "png"})
        self.record("screenshot", path=target)
        return target

    async def qmp_passthrough(self, command: str, arguments: dict[str, Any] | None) -> Any:
        """Any QMP command, for power users (`sercon qmp`); recorded in the event log."""
        result = await self._qmp(command, arguments or None)
        self.record("qmp", command=command)
        return result

    async def stop(self) -> None:
        """Power off for good and end the owner."""
        if self.state != "stopped":
            self.record("stop")
        await self._stop_qemu()
        self.state = "stopped"
        for client in list(self.clients):
            client.notice("the guest was shut down (sercon down)")
            client.close()
        self.clients.clear()
        self.serial_log.close()
        self.stopped.set()

    # ------------------------------------------------------------------ console

    async def _write_serial(self, data: bytes) -> None:
        writer = self._serial_writer
        if writer is None or self.state in ("dead", "stopped"):
            raise GuestNotRunning(f"guest {self.name} is not running (state {self.state})")
        writer.write(data)
        await writer.drain()

    def attach(
        self, mode: ClientMode, label: str, writer: asyncio.StreamWriter, *,
        from_offset: int | None = None, notices: bool = False, takeover: bool | None = None,
        greeting: Callable[[int], bytes] | None = None, encode: Callable[[bytes], bytes] | None = None,
    ) -> ConsoleClient:
        """Register a console client; replays the log from `from_offset` first (negative: from the end).

        `greeting(live_offset)` gives bytes sent before anything else (the console socket's reply line).
        """
        client = ConsoleClient(mode=mode, label=label, writer=writer, notices=notices, encode=encode)
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
                current.send(TAKEOVER_NOTICE.format(who=label).encode())
                self.record("console_takeover", client=label, previous=current.label)
                self._drop_client(current, "taken over")
            self.interactive = client
        if greeting is not None:
            client.send(greeting(self.serial_log.size))
        if from_offset is not None:
            replay = read_log(self.serial_log.path, from_offset)
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
            "spec": self.spec.__dict__,
        }

