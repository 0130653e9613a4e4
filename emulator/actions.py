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

from . import snapshots
from .errors import ActionFailed, InvalidSysRqKey, SerconError
from .state import State
from .sysrq import parse_keys

if TYPE_CHECKING:
    import contextlib

    from .backend import Backend
    from .serial_log import SerialLog
    from .snapshots import Snapshot
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
        serial_log: SerialLog
        _reset_reason: str | None

        def record(self, event: str, **fields: Any) -> dict[str, Any]: ...
        def _set_state(self, state: State) -> None: ...
        def _notice_all(self, text: str) -> None: ...
        def _require_running(self) -> Backend: ...
        async def _qmp(self, command: str, args: dict[str, Any] | None = None) -> Any: ...
        async def _write_serial(self, data: bytes) -> None: ...
        async def _stop_qemu(self, graceful: bool = True) -> None: ...
        async def _snapshot_key(self) -> str: ...
        backend: Backend

        async def power_on(self, reason: str = "power on", snapshot: str | None = None) -> Snapshot | None: ...
        def listener(self, event: str) -> contextlib.AbstractContextManager[asyncio.Future[dict[str, Any]]]: ...

    async def save_snapshot(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save the running guest's whole state as snapshot `name`; the guest then carries on."""
        backend = self._require_running()
        key = await self._snapshot_key()
        tmp = snapshots.prepare(name, key)
        try:
            saved = await backend.save_state(tmp, name, key)
            snap = snapshots.commit(tmp, name, key, {
                "boot": self.boot, "log_offset": self.serial_log.size, "image": self.spec.image,
                "guest": self.name, "extra": extra or {}, "qemu": backend.hypervisor_id(),
                "backend": backend.kind, "host": self.spec.host, **saved,
            })
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.record("snapshot_saved", snapshot=name, size=snap.meta["size"])
        return snap.meta

    async def restore_snapshot(self, name: str) -> None:
        """Replace this guest's QEMU by one loaded from snapshot `name`; clients stay attached."""
        self.record("power_off", reason=f"restore {name}")
        await self._stop_qemu(graceful=False)  # its state is being thrown away: no clean exit needed
        snap = await self.power_on(reason=f"restore {name}", snapshot=name)
        self._notice_all(f"restored from snapshot {name}")
        if snap is not None:  # restored in place once, likely to be again: the backend may get ready
            await self.backend.keep_spare(snap)

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
        await self._require_running().send_break()

    async def nmi(self) -> None:
        await self._require_running().nmi()
        self.record("nmi")

    async def reset(self) -> None:
        """Hard reset (QMP system_reset): the console stays connected and shows the new boot."""
        self._require_running()
        self._reset_reason = "reset (hard, from sercon)"
        self.record("reset")
        if self.state == "off":
            await self._reset_and_resume()
        else:
            await self._require_running().reset()

    async def _reset_and_resume(self) -> None:
        try:
            await self._require_running().resume_after_poweroff(self._reset_reason or "power on after a poweroff")
        finally:
            self._reset_reason = None  # a local QEMU's RESET took it; a libvirt host starts a new domain
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
            # Listening before the button is pressed, so the event cannot slip past.
            with self.listener("SHUTDOWN") as shutdown:
                await self._require_running().powerdown()
                done, _ = await asyncio.wait({shutdown}, timeout=timeout)
            if not done:
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
            await self._require_running().screenshot(Path(target))
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
