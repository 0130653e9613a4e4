"""sercon's virtual serial hardware: guests with a 16550 UART on COM1 and a cloud-console service.

Start with `Machine` (emulator/machine.py). The pieces, one file each:
spec (what a guest is), qemu_args (its command line), accel (KVM or TCG), images (recipes and
their cache), owner (the process that holds the serial stream), control and console_socket (how
other processes talk to the owner), rfc2217 (COM1 as a network serial port), serial_log (the log
and the event index), sysrq (valid keys), errors.
"""

from .errors import (
    ActionFailed,
    ConsoleBusy,
    GuestDied,
    GuestNotRunning,
    InvalidSysRqKey,
    QemuNotFound,
    SerconError,
    UnknownGuest,
    UnknownImage,
)
from .images import DEFAULT_IMAGE, build_image, resolve_image
from .machine import Machine
from .spec import GuestSpec

__all__ = [
    "DEFAULT_IMAGE",
    "ActionFailed",
    "ConsoleBusy",
    "GuestDied",
    "GuestNotRunning",
    "GuestSpec",
    "InvalidSysRqKey",
    "Machine",
    "QemuNotFound",
    "SerconError",
    "UnknownGuest",
    "UnknownImage",
    "build_image",
    "resolve_image",
]
