"""A guest's actions: SysRq, BREAK, NMI, reset, graceful restart, power cycle, screenshot, raw QMP,
snapshots. Mixed into `emulator.owner.ConsoleOwner`; each records itself through `record`, which
adds who asked (see `emulator.operations.ACTOR`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import firmware, snapshots
from .errors import ActionFailed, InvalidSysRqKey, SerconError
from .qemu_args import SERIAL_ID, find_qemu
from .state import State
from .sysrq import parse_keys

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

    from .serial_log import SerialLog
    from .spec import GuestSpec

#: Longest SysRq sequence one request may send (each key is a BREAK on the UART).
SYSRQ_MAX_KEYS = 32


class Actions:
    if TYPE_CHECKING:
        name: str
        spec: GuestSpec
        folder: Path
        state: State
        boot: int
        accel: str
        serial_log: SerialLog
        _reset_reason: str | None

        def record(self, event: str, **fields: Any) -> dict[str, Any]: ...
        def _set_state(self, state: State) -> None: ...
        def _notice_all(self, text: str) -> None: ...
        def _require_running(self) -> QMPClient: ...
        async def _qmp(self, command: str, args: dict[str, Any] | None = None) -> Any: ...
        async def _write_serial(self, data: bytes) -> None: ...
        async def _stop_qemu(self) -> None: ...
        async def power_on(self, reason: str = "power on", snapshot: str | None = None) -> None: ...
        _ram_file: str | None
        async def _set_ignore_shared(self, on: bool) -> None: ...
        def _ram_memfd(self) -> Path: ...

    async def save_snapshot(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save the running guest's whole state as snapshot `name`; the guest then carries on."""
        self._require_running()
        qemu = find_qemu()
        key = snapshots.snapshot_key(self.spec, self.accel, qemu)
        tmp = snapshots.prepare(name, key)
        await self._qmp("stop")
        shared_ram = self._ram_file is None  # booted: RAM in a memfd; restored: private file mapping
        try:
            target = tmp / "state.bin"
            await self._set_ignore_shared(shared_ram)
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
            if shared_ram:  # the guest is still stopped: its RAM cannot change under the copy
                await asyncio.get_running_loop().run_in_executor(
                    None, snapshots.copy_sparse, self._ram_memfd(), tmp / snapshots.RAM_FILE)
            snap = snapshots.commit(tmp, name, key, {
                "boot": self.boot, "log_offset": self.serial_log.size, "image": self.spec.image,
                "guest": self.name, "extra": extra or {}, "qemu": snapshots.qemu_version(qemu),
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

    async def sysrq(self, keys: str, interval: float = 0.1) -> list[str]:
        """BREAK then key, once per key; `interval` seconds between keys of a sequence.

        At most `SYSRQ_MAX_KEYS` keys; cancelled (the control connection closed), it stops at once
        and records the keys it did send."""
        sequence = parse_keys(keys)
        if len(sequence) > SYSRQ_MAX_KEYS:
            raise InvalidSysRqKey(f"a SysRq sequence has at most {SYSRQ_MAX_KEYS} keys, not {len(sequence)}; "
                                  "send it in parts")
        if not 0 <= interval <= 5:
            raise InvalidSysRqKey(f"the interval between SysRq keys is 0 to 5 seconds, not {interval}")
        self._require_running()
        sent: list[str] = []
        try:
            for i, key in enumerate(sequence):
                if i:
                    await asyncio.sleep(interval)
                await self.send_break()
                await self._write_serial(key.encode())
                sent.append(key)
        except asyncio.CancelledError:
            self.record("sysrq", keys="".join(sent), cancelled=True, asked="".join(sequence))
            raise
        self.record("sysrq", keys="".join(sent))
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
        self.record("reset")
        if self.state == "off":
            await self._reset_and_resume()
        else:
            await self._qmp("system_reset")

    async def _until_event(self, event: str, command: str, timeout: float) -> bool:
        """Run QMP `command` and wait for QEMU `event` after it; False if it did not come in time.

        A qemu.qmp listener registered before the command runs, so the event cannot slip past."""
        qmp = self._require_running()
        with qmp.listener(event) as listener:
            await self._qmp(command)
            try:
                await asyncio.wait_for(listener.get(), timeout=timeout)
            except TimeoutError:
                return False
        return True

    async def _reset_and_resume(self) -> None:
        # After a guest poweroff (-no-shutdown) QEMU refuses `cont` until a reset has happened.
        if not await self._until_event("RESET", "system_reset", timeout=10):
            raise ActionFailed("no RESET event after system_reset")
        await self._qmp("cont")
        self._set_state(State.RUNNING)

    async def restart(self, timeout: float = 60.0) -> None:
        """Graceful restart: ACPI power button, wait for the guest to power off, then power on.

        Clients stay attached; they see the shutdown and the new boot.
        """
        if self.state == "dead" or self.state == "stopped":
            await self.power_cycle(reason="restart (QEMU was not running)")
            return
        self._require_running()
        if self.state != "off":
            self.record("restart_requested", timeout=timeout)
            if not await self._until_event("SHUTDOWN", "system_powerdown", timeout=timeout):
                raise ActionFailed(
                    f"guest {self.name} did not power off within {timeout:.0f}s of the ACPI power button "
                    "(it needs the ACPI button driver and acpid or systemd-logind); use reset for a hard reset"
                )
        self._reset_reason = "restart (graceful)"
        await self._reset_and_resume()

    async def power_cycle(self, reason: str = "power cycle") -> None:
        """End the QEMU process and start a new one; clients and the log carry on."""
        self.record("power_off", reason=reason)
        self._notice_all(f"{reason}: powering off")
        await self._stop_qemu()
        await self.power_on(reason=reason)
        self._notice_all(f"{reason}: powered on, boot {self.boot}")

    async def screenshot(self, path: str, uid: int | None = None) -> str:
        """The screen as PNG at `path`, written by QEMU as this guest's user; recorded with who asked."""
        target = str(Path(path).resolve())
        try:
            await self._qmp("screendump", {"filename": target, "format": "png"})
        except SerconError as exc:
            self.record("screenshot", path=target, uid=uid, ok=False, error=str(exc)[:200])
            raise
        self.record("screenshot", path=target, uid=uid, ok=True)
        return target

    async def qmp_passthrough(self, command: str, arguments: dict[str, Any] | None, uid: int | None = None) -> Any:
        """Any QMP command (the whole QEMU monitor), for the guest's own user or root only (the control
        socket lets no one else in); recorded in the event log with who asked, before it runs."""
        self.record("qmp", command=command, uid=uid, arguments=json.dumps(arguments)[:300] if arguments else None)
        return await self._qmp(command, arguments or None)
