"""What a guest is made of: `GuestSpec`, a plain dataclass that round-trips through JSON.

A spec comes from an image recipe's build output (see `emulator.images`), from CLI flags
(`sercon up --kernel K --initrd I`), or from Python. `emulator.qemu_args` turns it into a command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Accel = Literal["auto", "tcg", "kvm"]
Policy = Literal["takeover", "reject"]


@dataclass
class GuestSpec:
    """One virtual machine with a 16550 UART on COM1.

    Either `kernel` (with optional `initrd` and `append`) or `disk` must be given.
    """

    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    disk: str | None = None
    disk_format: str | None = None  # None: let QEMU probe raw/qcow2
    disk_interface: Literal["virtio", "ide"] = "virtio"
    #: Writes go to a throw-away overlay (QEMU `-snapshot`); the image file is never modified.
    disk_snapshot: bool = False
    memory_mb: int = 512
    cpus: int = 1
    machine: str = "pc"
    #: UEFI: the firmware's CODE flash (read-only pflash 0), e.g. OVMF_CODE_4M.fd; None is SeaBIOS.
    firmware: str | None = None
    #: The VARS flash template (pflash 1); each power-on writes to its own copy, never to this file.
    firmware_vars: str | None = None
    #: Secure Boot firmware: the machine gets SMM and the flash is SMM-protected (q35 only).
    secure_boot: bool = False
    accel: Accel = "auto"
    #: `-device pvpanic`: the guest reports panics as a QMP GUEST_PANICKED event.
    pvpanic: bool = True
    extra_args: list[str] = field(default_factory=list)
    #: Who may type when two interactive clients want the console: Azure takes over, AWS rejects.
    policy: Policy = "takeover"
    #: Where QEMU runs: a libvirt URI (`qemu:///system`, `qemu+ssh://host/system`); None is a QEMU
    #: process on this machine. The owner (log, clients, events) is local either way.
    host: str | None = None
    #: Informational: the recipe this came from and the login it was built with.
    image: str | None = None
    user: str | None = None
    password: str | None = None

    def validate(self) -> None:
        from .errors import SerconError

        if not self.kernel and not self.disk:
            raise SerconError("a guest needs a kernel (--kernel) or a disk image (--disk)")
        for label, path in (("kernel", self.kernel), ("initrd", self.initrd), ("disk", self.disk)):
            if path and not Path(path).is_file():
                raise SerconError(f"{label} file not found: {path}")
        if self.firmware and not Path(self.firmware).is_file():
            from .firmware import missing_firmware_message

            raise SerconError(missing_firmware_message(self.firmware))
        if self.firmware_vars and not Path(self.firmware_vars).is_file():
            from .firmware import missing_firmware_message

            raise SerconError(missing_firmware_message(self.firmware_vars))
        if self.firmware_vars and not self.firmware:
            raise SerconError("firmware_vars needs firmware (the UEFI CODE flash it belongs to)")
        if self.secure_boot and not self.firmware:
            raise SerconError("secure_boot needs UEFI firmware (firmware=.../OVMF_CODE_4M.secboot.fd)")
        if self.secure_boot and not self.machine.split(",")[0].startswith(("q35", "pc-q35")):
            raise SerconError(f"Secure Boot needs the q35 machine (SMM-protected flash), not {self.machine!r}: "
                              "use --machine q35 (machine=\"q35\")")
        if self.initrd and not self.kernel:
            raise SerconError("an initrd needs a kernel (--kernel)")
        if self.memory_mb < 64:
            raise SerconError(f"memory_mb={self.memory_mb} is too small for Linux; use 128 or more")
        if self.cpus < 1:
            raise SerconError("cpus must be at least 1")
        if self.accel not in ("auto", "tcg", "kvm"):
            raise SerconError(f"accel must be auto, tcg or kvm, not {self.accel!r}")
        if self.host is not None:
            from .host_uri import check_host_uri

            check_host_uri(self.host)
        if self.policy not in ("takeover", "reject"):
            raise SerconError(f"policy must be takeover or reject, not {self.policy!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            from .errors import SerconError

            raise SerconError(f"unknown guest spec field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> GuestSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> GuestSpec:
        return dataclasses.replace(self, **changes)
