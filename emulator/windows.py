"""The Windows guest profile: `windows_spec(image)` gives a GuestSpec that boots a user's Windows disk.

    from emulator import Machine
    from emulator.windows import windows_spec
    with Machine(windows_spec("/images/win2019.qcow2", firmware="uefi")) as m:
        ...   # SAC on COM1: see harness/sac.py

What it chooses, and why:
- `q35` with the disk on `if=ide`: on q35 that is the ICH9 AHCI controller, which Windows drives
  with its inbox `storahci` (no virtio drivers to download). `disk_interface="ide"` on `pc` gives
  the PIIX IDE controller instead (older images).
- The disk format from the file name (qcow2, raw/img, vhd -> QEMU `vpc`, vhdx); QEMU probes others.
- `disk_snapshot=True` by default: writes go to a throw-away overlay, the image is never modified.
- BIOS is QEMU's default SeaBIOS; UEFI is OVMF as for every sercon UEFI guest (`emulator.firmware`):
  by default Debian 13's package, fetched and verified once (`ovmf="host"` takes /usr/share/OVMF,
  whose Debian 12 build can hang after resets on a busy host), optionally with Secure Boot. Each
  power-on writes its own copy of the variable store, made from the firmware's template or from
  `vars_dir/OVMF_VARS.fd` (created from the template once, so boot entries put there are kept).
- COM1 is the same 16550 on the same chardev plumbing as every sercon guest; EMS/SAC must be
  turned on inside the image (images/windows/README.md). `-device pvpanic` stays on (harmless
  without the driver), `-rtc base=localtime` as Windows expects, and the ACPI power button
  (sercon's `restart()`) is honoured by Windows.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from . import firmware as uefi
from .errors import SerconError
from .spec import GuestSpec

Firmware = Literal["bios", "uefi"]

_FORMATS = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw", ".vhd": "vpc", ".vpc": "vpc", ".vhdx": "vhdx"}


def disk_format_for(image: str | Path) -> str | None:
    """QEMU's format name for an image file, from its extension (None: let QEMU probe)."""
    return _FORMATS.get(Path(image).suffix.lower())


def windows_spec(
    image: str | Path,
    firmware: Firmware = "bios",
    memory_mb: int = 4096,
    cpus: int = 2,
    *,
    disk_interface: Literal["ide", "virtio"] = "ide",
    machine: str = "q35",
    snapshot: bool = True,
    vars_dir: str | Path | None = None,
    ovmf: str = "trixie",
    secure_boot: bool = False,
    user: str | None = None,
    password: str | None = None,
    extra_args: list[str] | None = None,
) -> GuestSpec:
    """A GuestSpec for a Windows disk image with SAC on COM1 (see the module docstring for the choices)."""
    path = Path(image).expanduser().resolve()
    if not path.is_file():
        raise SerconError(f"Windows image not found: {path} (set WINDOWS_IMAGE to a qcow2, raw, vhd or vhdx file)")
    if firmware not in ("bios", "uefi"):
        raise SerconError(f"firmware must be \"bios\" or \"uefi\", not {firmware!r}")
    if memory_mb < 2048:
        raise SerconError(f"memory_mb={memory_mb} is too little for Windows; give 2048 or more (4096 recommended)")
    if secure_boot and firmware != "uefi":
        raise SerconError("secure_boot needs firmware=\"uefi\"")
    code = variables = None
    if firmware == "uefi":
        try:
            code, variables = uefi.find_ovmf(secure_boot, uefi.ovmf_folder(ovmf))
        except SerconError as exc:
            raise SerconError(f"{exc}; or use firmware=\"bios\" (WINDOWS_FIRMWARE=bios) for an image that "
                              "boots with BIOS/MBR") from None
        if vars_dir:
            folder = Path(vars_dir)
            folder.mkdir(parents=True, exist_ok=True)
            kept = folder / "OVMF_VARS.fd"
            if not kept.exists():
                shutil.copyfile(variables, kept)
            variables = kept
    return GuestSpec(
        disk=str(path),
        disk_format=disk_format_for(path),
        disk_interface=disk_interface,
        disk_snapshot=snapshot,
        memory_mb=memory_mb,
        cpus=cpus,
        machine=machine,
        firmware=str(code) if code else None,
        firmware_vars=str(variables) if variables else None,
        secure_boot=secure_boot,
        pvpanic=True,
        extra_args=["-rtc", "base=localtime", *(extra_args or [])],
        image=f"windows:{path.name}",
        user=user,
        password=password,
    )
