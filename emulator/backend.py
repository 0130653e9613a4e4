"""Where a guest's QEMU runs: the one interface between the console owner and a hypervisor.

The owner (`emulator.owner.ConsoleOwner`) stays on this machine and does what it always does:
every byte in `serial.log`, the clients, takeover, events, RFC 2217. What it needs from the
machine that runs QEMU is small, and is this class:

- `power_on` a QEMU for the spec (booting, or loading a snapshot), then report through `Hooks`:
  that it started (`on_powered_on`, before its first byte or event), COM1's bytes
  (`on_serial`), QEMU's events under their QMP names (`on_qemu_event`: RESET, SHUTDOWN,
  GUEST_PANICKED, STOP, RESUME, WATCHDOG) and an end nobody asked for (`on_exit`);
- `write_serial`, `qmp` (any QMP command), and the actions with a native form on some hypervisor
  (`send_break`, `nmi`, `reset`, `powerdown`, `screenshot`, `save_state`);
- `stop` it.

Two implementations: `emulator.local_qemu.LocalQemu` (a QEMU child process of the owner, the
default) and `emulator.libvirt_host.LibvirtDomain` (a domain on any libvirt host, `GuestSpec.host`).
An action written in `emulator.actions` on top of this interface reaches both.
"""

from __future__ import annotations

import abc
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .snapshots import Snapshot
    from .spec import GuestSpec


class Hooks(Protocol):
    """What a backend reports to its owner, all on the owner's event loop."""

    def on_powered_on(self, **fields: Any) -> None: ...
    def on_serial(self, data: bytes) -> None: ...
    def on_qemu_event(self, name: str, data: dict[str, Any]) -> None: ...
    def on_exit(self, how: str, detail: str) -> None: ...
    def record(self, event: str, **fields: Any) -> dict[str, Any]: ...


class Backend(abc.ABC):
    """One guest's QEMU, wherever it runs."""

    #: "local" or "libvirt": shown by `sercon ls` and `info`.
    kind: str = ""

    def __init__(self, name: str, spec: GuestSpec, folder: Path, hooks: Hooks) -> None:
        self.name = name
        self.spec = spec
        self.folder = folder
        self.hooks = hooks
        #: The accelerator in use ("tcg" or "kvm") and why; chosen at the first power-on.
        self.accel = ""
        self.accel_reason = ""

    # ------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    async def choose_accel(self) -> None:
        """Set `accel` and `accel_reason` (before the first power-on: snapshot keys name it)."""

    @abc.abstractmethod
    async def power_on(self, reason: str, snapshot: Snapshot | None = None) -> dict[str, Any]:
        """Start QEMU (booting, or loading `snapshot`) and connect COM1 and events; returns the
        fields the owner records with its `power_on` event. Raises SerconError with the cause."""

    @abc.abstractmethod
    async def stop(self, graceful: bool = True) -> None:
        """End QEMU (an expected end: no `on_exit`); a no-op when it is not running."""

    async def close(self) -> None:
        """Stop, and let go of whatever the backend holds (the owner is ending)."""
        await self.stop()

    async def keep_spare(self, snapshot: Snapshot) -> None:  # noqa: B027 - a backend may keep no spare
        """The guest was just restored in place from `snapshot`: a backend may get the next restore
        of it ready in the background (the local one loads a paused QEMU)."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """True while a QEMU is there to take commands."""

    @abc.abstractmethod
    async def resume_after_poweroff(self, reason: str) -> None:
        """Power on again after the guest powered itself off (restart, reset from `off`): the
        same QEMU reset (local), or a new domain (libvirt), whose power_on says `reason`."""

    # ------------------------------------------------------------- commands

    @abc.abstractmethod
    async def qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Any QMP command; ActionFailed (with QEMU's error) when it fails."""

    @abc.abstractmethod
    async def write_serial(self, data: bytes) -> None:
        """Bytes to COM1, as typed."""

    #: The chardev id of COM1, for `chardev-send-break`.
    serial_id = ""

    async def send_break(self) -> None:
        await self.qmp("chardev-send-break", {"id": self.serial_id})

    async def nmi(self) -> None:
        await self.qmp("inject-nmi")

    async def reset(self) -> None:
        await self.qmp("system_reset")

    async def powerdown(self) -> None:
        """The ACPI power button."""
        await self.qmp("system_powerdown")

    @abc.abstractmethod
    async def screenshot(self, path: Path) -> None:
        """The screen as a PNG file at `path` on this machine."""

    # ------------------------------------------------------------ snapshots

    @abc.abstractmethod
    def hypervisor_id(self) -> str:
        """What a saved state depends on besides the spec: the QEMU (and host) that made it."""

    async def hypervisor(self) -> str:
        """`hypervisor_id` from the event loop (in a thread: it may ask a host or run QEMU)."""
        return await asyncio.to_thread(self.hypervisor_id)

    @abc.abstractmethod
    async def save_state(self, tmp: Path, snapshot: str, key: str) -> dict[str, Any]:
        """Save the guest's whole state into the snapshot folder `tmp` (the guest then carries on);
        returns what goes into its meta.json besides the defaults."""

    def forget_snapshot(self, meta: dict[str, Any]) -> None:  # noqa: B027 - most backends keep nothing elsewhere
        """Remove what a snapshot keeps outside its local folder (a libvirt host's files)."""

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        """What `info` shows about where the guest runs."""
        return {"backend": self.kind, "host": None}

    def exit_text(self) -> str:
        """How the last QEMU ended, for error messages."""
        return "unknown status"


def backend_for(name: str, spec: GuestSpec, folder: Path, hooks: Hooks) -> Backend:
    """The backend for `spec`: libvirt when it names a host, else a local QEMU process."""
    if spec.host:
        from .libvirt_host import LibvirtDomain

        return LibvirtDomain(name, spec, folder, hooks)
    from .local_qemu import LocalQemu

    return LocalQemu(name, spec, folder, hooks)
