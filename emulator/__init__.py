"""sercon's virtual serial hardware: guests with a 16550 UART on COM1 and a cloud-console service.

Start with `Machine` (emulator/machine.py). The pieces, one file each:
spec (what a guest is), qemu_args (its command line), accel (KVM or TCG), images (recipes and
their cache), owner (the process that holds the serial stream), control and console_socket (how
other processes talk to the owner), rfc2217 (COM1 as a network serial port), serial_log (the log
and the event index), sysrq (valid keys), errors.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from .spec import GuestSpec

if TYPE_CHECKING:
    from .images import DEFAULT_IMAGE, build_image, resolve_image
    from .machine import Machine

#: Imported on first use: the owner process (emulator.daemon) starts QEMU sooner without them.
_LAZY = {"Machine": "machine", "DEFAULT_IMAGE": "images", "build_image": "images", "resolve_image": "images"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
