"""Every error sercon raises on purpose, each with a message that says what to do next.

The control socket carries errors by class name, so a client process re-raises the same class
the guest's owner raised (see `emulator.control`).
"""

from __future__ import annotations


class SerconError(Exception):
    """Base class: something the user can fix, explained in the message."""


class QemuNotFound(SerconError):
    """The QEMU binary is not installed."""


class UnknownImage(SerconError):
    """An image name that is neither a recipe nor a file."""


class ImageBuildError(SerconError):
    """A recipe failed to build."""


class InvalidSysRqKey(SerconError):
    """A SysRq key that the Linux kernel does not define."""


class UnknownGuest(SerconError):
    """No guest of that name is running under this sercon home."""


class GuestExists(SerconError):
    """A guest of that name is already running."""


class GuestNotRunning(SerconError):
    """The guest's QEMU is not running (powered off, or died)."""


class GuestDied(SerconError):
    """QEMU exited without being asked to. The message ends with the last console lines."""


class ConsoleBusy(SerconError):
    """Another interactive session holds the console and the policy is `reject`."""


class ActionFailed(SerconError):
    """A power, NMI, SysRq or screenshot action did not complete."""


class SnapshotError(SerconError):
    """A snapshot is missing, stale, foreign or corrupt; the message says which and what to do."""


class ControlError(SerconError):
    """The control socket spoke something unexpected (version mismatch, or a bug)."""


class SettingError(SerconError):
    """A SERCON_* setting (emulator/settings.py) with a value it cannot take."""


ERROR_CLASSES: dict[str, type[SerconError]] = {
    cls.__name__: cls
    for cls in (
        SerconError,
        QemuNotFound,
        UnknownImage,
        ImageBuildError,
        InvalidSysRqKey,
        UnknownGuest,
        GuestExists,
        GuestNotRunning,
        GuestDied,
        ConsoleBusy,
        ActionFailed,
        ControlError,
        SnapshotError,
        SettingError,
    )
}
