"""Driving OVMF's own menus over COM1: Esc during the boot-manager wait, then the Boot Manager.

The firmware's console is on the serial port (OVMF adds COM1 to ConOut/ConIn), drawn with VT100
cursor addressing (`ESC [ row ; col H`, two-digit numbers). Entries of a form start at column 4.

    ovmf = OvmfConsole(console)
    ovmf.enter_setup(timeout=120)            # Esc until the front page (Device Manager, Boot Manager...)
    ovmf.open_boot_manager()                 # its entries, e.g. ["UEFI Misc Device", "EFI Internal Shell"]
    ovmf.boot("UEFI Misc Device")            # highlight it and press Enter

Nothing is typed before the firmware's first output: early input slows a boot down a lot.
"""

from __future__ import annotations

import re
import time

from emulator.errors import SerconError

from .console import Console, ConsoleTimeout

FIRST_OUTPUT = re.compile(rb"\x1b\[2J|BdsDxe")
FRONT_PAGE = re.compile(rb"Boot Maintenance Manager")
TOO_LATE = re.compile(rb"BdsDxe: starting Boot\d+ \"(?!UiApp\")[^\"]*\"|Welcome to GRUB|GNU GRUB")
BOOT_MANAGER_TITLE = b"Boot Manager Menu"
#: Its help text: ASCII arrows up to edk2 2022 (Debian 12), UTF-8 ones since (Debian 13).
BOOT_MANAGER_HELP = re.compile(rb"Use the <(?:\^|\xe2\x86\x91)> and <(?:v|\xe2\x86\x93)> keys")
BOOT_MANAGER_HELP_START = "Use the <"
FIELD = re.compile(rb"\x1b\[(\d+);(\d+)H([^\x1b]*)")
ESC, DOWN, ENTER = b"\x1b", b"\x1b[B", b"\r"


class OvmfError(SerconError):
    """OVMF's screens were not what was expected (Esc came too late, no such boot entry)."""


def column4_rows(screen: bytes) -> list[str]:
    """The texts drawn at column 4 (where OVMF's forms put their entries), top to bottom; the last drawing wins."""
    rows: dict[int, str] = {}
    for match in FIELD.finditer(screen):
        if int(match.group(2)) == 4:
            rows[int(match.group(1))] = match.group(3).decode("latin-1").strip()
    return [rows[r] for r in sorted(rows) if rows[r]]


def entries_between(rows: list[str], first: str, end: str) -> list[str]:
    """The rows from the one starting with `first` up to (not including) the one starting with `end`."""
    try:
        start = next(i for i, text in enumerate(rows) if text.startswith(first))
        stop = next(i for i, text in enumerate(rows) if text.startswith(end) and i > start)
    except StopIteration:
        raise OvmfError(f"OVMF's screen did not show {first!r} ... {end!r}; it showed: {rows}") from None
    return rows[start:stop]


class OvmfConsole:
    def __init__(self, console: Console) -> None:
        self.console = console
        #: What the console showed since the last screen was read (the front page, a menu).
        self.screen = b""

    def _screen_so_far(self) -> bytes:
        """The bytes up to the last match and those received (and not matched) since."""
        pending = self.console.discard_buffered()
        return self.console.before + self.console.match.group(0) + pending + self.console.drain(quiet=0.5, limit=10)

    def enter_setup(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        """Wait for the firmware's first output, then press Esc until its front page shows.

        Raises OvmfError if the firmware starts a boot entry first (the wait is too short:
        the image's `firmware_menu_wait_ms`, QEMU's `-boot menu=on,splash-time=MS`).
        """
        self.console.expect(FIRST_OUTPUT, timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.console.send(ESC)
            try:
                index = self.console.expect([FRONT_PAGE, TOO_LATE], timeout=interval)
            except ConsoleTimeout:
                continue
            if index == 0:
                self.screen = self._screen_so_far()
                return
            raise OvmfError("OVMF started booting before Esc reached it (its boot-manager wait is too short, "
                            "see -boot menu=on,splash-time=MS)")
        raise OvmfError(f"OVMF's front page did not appear within {timeout:.0f}s of pressing Esc")

    def _choose(self, wanted: str, entries: list[str]) -> None:
        if wanted not in entries:
            raise OvmfError(f"no entry {wanted!r} in OVMF's menu; it shows: {', '.join(entries)}")
        self.console.send(DOWN * entries.index(wanted))
        self.console.drain(quiet=0.5, limit=10)
        self.console.send(ENTER)

    def open_boot_manager(self, timeout: float = 60.0) -> list[str]:
        """From the front page, open the Boot Manager; returns its boot entries, top to bottom."""
        screen = self.screen
        # The front page's entries, the first highlighted: Select Language ... Continue, Reset.
        self._choose("Boot Manager", entries_between(column4_rows(screen), "Select Language", "Reset"))
        self.console.expect(BOOT_MANAGER_HELP, timeout=timeout)
        screen = self._screen_so_far()
        title = screen.rfind(b"H" + BOOT_MANAGER_TITLE)  # the title row (the help text names it too)
        screen = screen[screen.rfind(b"\x1b[", 0, title):]
        return entries_between(column4_rows(screen), BOOT_MANAGER_TITLE.decode(), BOOT_MANAGER_HELP_START)[1:]

    def boot(self, entry: str, entries: list[str]) -> None:
        """Highlight `entry` of the Boot Manager (whose entries `open_boot_manager` returned) and start it."""
        self._choose(entry, entries)
