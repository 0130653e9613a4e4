"""The QEMU command line for a `GuestSpec`, and finding the QEMU binary.

COM1 is QEMU's default `isa-serial` (a 16550A at 0x3F8, IRQ 4). Its chardev is either a socket
whose file descriptor the caller already holds, or a pair of FIFOs the caller made and opened
first (`pipe`, what the owner uses): either way no byte is emitted before someone reads it. QMP
comes on a socket. Nothing here starts a process: it is pure, and unit-tested.
"""

from __future__ import annotations

import os
import shutil

from .errors import QemuNotFound
from .spec import GuestSpec

QEMU_BINARY = "qemu-system-x86_64"
SERIAL_ID = "com1"


def find_qemu() -> str:
    """Path of qemu-system-x86_64 (or `$SERCON_QEMU`), or a QemuNotFound that names the package."""
    override = os.environ.get("SERCON_QEMU")
    if override:
        if shutil.which(override):
            return shutil.which(override) or override
        raise QemuNotFound(f"SERCON_QEMU={override} is not an executable")
    found = shutil.which(QEMU_BINARY)
    if not found:
        raise QemuNotFound(
            f"{QEMU_BINARY} not found: install it with `apt-get install qemu-system-x86 qemu-utils` "
            "(or run `make setup` as root), or point SERCON_QEMU at a QEMU binary"
        )
    return found


#: The id of the guest RAM's memory backend (also its RAM block's name in a migration stream).
RAM_ID = "pc.ram"


def opt(value: str) -> str:
    """`value` inside a QEMU option string (`key=value,...`): a comma is written twice."""
    return value.replace(",", ",,")


def serial_chardev(serial_fd: int | None, serial_pipe: str | None) -> str:
    """COM1's `-chardev`: a socket on `serial_fd`, or QEMU's `pipe` backend on `serial_pipe`.in
    (the guest's input, read by QEMU) and `serial_pipe`.out (the UART's output)."""
    if (serial_fd is None) == (serial_pipe is None):
        raise ValueError("COM1 needs exactly one of serial_fd and serial_pipe")
    if serial_pipe is not None:
        return f"pipe,id={SERIAL_ID},path={opt(serial_pipe)}"
    return f"socket,id={SERIAL_ID},fd={serial_fd}"


def ram_backend(memory_mb: int, ram_file: str | None = None) -> str:
    """The `-object` for guest RAM: a shared memfd, or a snapshot's RAM file mapped copy-on-write."""
    if ram_file is None:
        return f"memory-backend-memfd,id={RAM_ID},size={memory_mb}M,share=on"
    return f"memory-backend-file,id={RAM_ID},size={memory_mb}M,mem-path={opt(ram_file)},share=off"


def qemu_args(
    spec: GuestSpec,
    *,
    accel: str,
    serial_fd: int | None = None,
    qmp_fd: int,
    serial_pipe: str | None = None,
    name: str = "sercon",
    qemu: str = QEMU_BINARY,
    disk_overlay: str | None = None,
    ram_file: str | None = None,
    firmware_vars: str | None = None,
) -> list[str]:
    """Command line for one power-on of `spec` with the chosen accelerator ("tcg" or "kvm").

    Guest RAM is a memory backend named `RAM_ID`: a shared memfd for a guest that boots (so a
    snapshot can copy the RAM as it is instead of streaming it), or, with `ram_file`, a snapshot's
    RAM file mapped private: pages are read from the file on first touch and copied only when the
    guest writes them, so guests restored from one snapshot share the pages they leave alone.

    `firmware_vars` is this power-on's copy of the UEFI variable store (default: the spec's template,
    read-only, for callers that make no copy).
    """
    machine = spec.machine
    if spec.secure_boot and "smm=" not in machine:
        machine += ",smm=on"
    args = [
        qemu,
        "-name", f"guest={name}",
        "-nodefaults",
        "-no-user-config",
        "-machine", f"{machine},accel={accel},memory-backend={RAM_ID}",
        "-object", ram_backend(spec.memory_mb, ram_file),
        "-m", str(spec.memory_mb),
        "-smp", str(spec.cpus),
        "-display", "none",
        "-vga", "std",  # so that `screendump` has a screen to capture
        # QEMU must survive a guest poweroff so that restart() can power on again in the same process.
        "-no-shutdown",
        # Panics are reported (GUEST_PANICKED) but QEMU leaves the guest alone: its own
        # kernel.panic setting decides whether it reboots.
        "-action", "panic=none",
        "-chardev", serial_chardev(serial_fd, serial_pipe),
        "-serial", f"chardev:{SERIAL_ID}",
        "-chardev", f"socket,id=qmp,fd={qmp_fd}",
        "-mon", "chardev=qmp,mode=control",
    ]
    if accel == "kvm":
        args += ["-cpu", "host"]
    if spec.pvpanic:
        args += ["-device", "pvpanic"]
    if spec.firmware:
        args += firmware_args(spec, firmware_vars)
    if spec.kernel:
        args += ["-kernel", spec.kernel]
        if spec.initrd:
            args += ["-initrd", spec.initrd]
        if spec.append:
            args += ["-append", spec.append]
    if spec.disk and disk_overlay:
        # The owner's throw-away overlay (backed by the image): snapshots can save and restore it.
        args += ["-drive", f"file={opt(disk_overlay)},if={spec.disk_interface},format=qcow2"]
    elif spec.disk:
        drive = f"file={opt(spec.disk)},if={spec.disk_interface}"
        if spec.disk_format:
            drive += f",format={spec.disk_format}"
        args += ["-drive", drive]
        if spec.disk_snapshot:
            args += ["-snapshot"]
    args += list(spec.extra_args)
    return args


def firmware_args(spec: GuestSpec, firmware_vars: str | None) -> list[str]:
    """UEFI as two flash chips: CODE read-only, VARS the guest's own copy (SMM-protected under Secure Boot)."""
    assert spec.firmware
    args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={opt(spec.firmware)}"]
    if firmware_vars:
        args += ["-drive", f"if=pflash,format=raw,unit=1,file={opt(firmware_vars)}"]
    elif spec.firmware_vars:
        args += ["-drive", f"if=pflash,format=raw,unit=1,readonly=on,file={opt(spec.firmware_vars)}"]
    if spec.secure_boot:
        # Only code running in SMM may write the variable store: what makes Secure Boot's keys stick.
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return args
