"""Driving GRUB's menu over a serial console: catch the menu, edit the kernel line, boot it.

What cloud docs tell a user to do at the serial console (e.g. Azure: "reset the VM with the
console open, press Esc/e in GRUB, append `systemd.unit=rescue.target` or `init=/bin/sh` to the
`linux` line, Ctrl-X"), done by a program:

    grub = GrubConsole(console)
    grub.wait_for_menu(timeout=120)          # the countdown line is on the screen
    grub.edit_kernel_line(" systemd.unit=rescue.target")   # 'e', find the linux line, append, Ctrl-X

GRUB draws with VT100 cursor addressing (`ESC [ row ; col H`), so the entry being edited is read
back from the screen: each editor row starts at column 3, and a logical line that does not fit
ends its row with a backslash and continues on the next row.
"""

from __future__ import annotations

import re

from emulator import Machine
from emulator.errors import SerconError

from .console import Console, ConsoleTimeout
from .linux import LinuxShell

KERNEL_BANNER = re.compile(rb"Linux version \d")
MAINTENANCE_PROMPT = re.compile(rb"Give root password for maintenance\s+\(or press Control-D to continue\): ")
ROOT_PROMPT = re.compile(rb"root@[\w.-]+:[^\r\n#]*# ")

MENU_COUNTDOWN = re.compile(rb"The highlighted entry will be executed automatically in \d+s")
MENU_HELP = re.compile(rb"Use the \^ and v keys to select")
EDITOR_HELP = re.compile(rb"return to the GRUB menu\.?")
ROW = re.compile(rb"\x1b\[(\d+);3H([^\x1b]*)")
GRUB_PROMPT = re.compile(rb"grub> ")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
CTRL_N, CTRL_E, CTRL_X = b"\x0e", b"\x05", b"\x18"


class GrubError(SerconError):
    """GRUB's screen was not what was expected (no menu, no `linux` line in the entry)."""


class GrubConsole:
    def __init__(self, console: Console) -> None:
        self.console = console

    def select_entry(self, down: int) -> None:
        """Stop the countdown, move the highlight `down` entries (GRUB's `v` key) and boot it (Enter)."""
        self.console.send(b"v" * down if down else b"^")
        self.console.drain(quiet=0.3, limit=5)
        self.console.send(b"\r")

    def command_line(self, timeout: float = 30.0) -> None:
        """From the menu, open GRUB's command line (`c`)."""
        self.console.send(b"c")
        self.console.expect(GRUB_PROMPT, timeout=timeout)

    def type(self, keys: bytes, pause: float = 0.1) -> None:
        """Send keys one at a time, each once GRUB has echoed the one before (the line went quiet).

        Under UEFI with the firmware's console on COM1, two readers take bytes from the UART: GRUB's
        serial terminal and the firmware's console, which GRUB reads as its `console` input. A burst
        of keys gets split between them and reaches GRUB out of order; one key at a time does not.
        """
        for key in keys:
            self.console.send(bytes([key]))
            self.console.drain(quiet=pause, limit=5)

    def command(self, line: str, timeout: float = 120.0) -> str:
        """Run one command at GRUB's command line; returns what it printed (e.g. `error: bad shim signature.`)."""
        self.type(line.encode())
        self.console.send(b"\r")
        self.console.expect(GRUB_PROMPT, timeout=timeout)
        # type() read the echo of the line; what came after Enter is the command's output.
        return ANSI.sub(b"", self.console.before).decode(errors="replace").replace("\r", "").strip()

    def wait_for_menu(self, timeout: float = 120.0) -> None:
        """Wait until GRUB's menu counts down, then stop the countdown (any key but Enter does)."""
        self.console.expect(MENU_COUNTDOWN, timeout=timeout)

    def edit_kernel_line(self, extra: str, *, entry_down: int = 0, timeout: float = 30.0) -> str:
        """Open the highlighted entry (after `entry_down` presses of Down), append `extra` to its
        `linux` line and boot it with Ctrl-X. Returns the entry's linux line as it was."""
        for _ in range(entry_down):
            self.console.send(b"\x1b[B")
        self.console.send(b"e")
        self.console.expect(EDITOR_HELP, timeout=timeout)
        # GRUB may draw the entry before the help line (BIOS) or after it (EFI): keep both sides.
        screen = (self.console.before + self.console.match.group(0) + self.console.discard_buffered()
                  + self.console.drain(quiet=0.5, limit=10))
        lines = editor_lines(screen)
        index = next((i for i, line in enumerate(lines) if line.strip().startswith(("linux", "linuxefi"))), None)
        if index is None:
            raise GrubError("no `linux` line in the GRUB entry being edited; the editor showed:\n" + "\n".join(lines))
        self.type(CTRL_N * index + CTRL_E + extra.encode())
        self.console.send(CTRL_X)
        return lines[index].strip()


def editor_lines(screen: bytes) -> list[str]:
    """The logical lines of the entry GRUB's editor drew last in `screen` (wrapped rows joined)."""
    start = screen.rfind(b"setparams")
    if start == -1:
        raise GrubError("GRUB's editor screen did not show the entry (no `setparams` line)")
    # Back up to the cursor address that precedes `setparams`.
    start = screen.rfind(b"\x1b[", 0, start)
    rows: dict[int, str] = {}
    for match in ROW.finditer(screen, start):
        text = match.group(2).decode(errors="replace").replace("\r", "").replace("\n", "")
        rows[int(match.group(1))] = text.rstrip()
    lines: list[str] = []
    joining = False
    for row in sorted(rows):
        text = rows[row]
        if joining:
            lines[-1] += text.rstrip("\\")
        else:
            lines.append(text.rstrip("\\"))
        joining = text.endswith("\\")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


class GrubGuest:
    """A disk guest whose boots go through GRUB on the serial console, with one console kept open.

    What the GRUB scenarios and the rescue drills share: catch the menu, log in, answer sulogin,
    run a command at a plain root prompt (rescue shell, init=/bin/sh).
    """

    def __init__(self, machine: Machine, user: str = "root", password: str = "sercon", boot_timeout: float = 240.0,
                 *, console: Console | None = None, shell: LinuxShell | None = None) -> None:
        self.machine = machine
        self.user = user
        self.password = password
        self.boot_timeout = boot_timeout
        #: The console, from the start of the serial log unless one is given (e.g. the shell's).
        self.console = console or (shell.console if shell else Console.for_machine(machine, from_offset=0))
        self.grub = GrubConsole(self.console)
        #: The logged-in shell of the current boot, if any (a reset or reboot ends it).
        self.shell: LinuxShell | None = shell

    def login(self, password: str | None = None) -> LinuxShell:
        self.shell = LinuxShell(self.console)
        self.shell.login(self.user, password or self.password, timeout=self.boot_timeout)
        return self.shell

    def logged_in(self) -> LinuxShell:
        return self.shell or self.login()

    def reset_to_menu(self) -> None:
        """Hard reset with the console open, and wait for GRUB's countdown."""
        self.shell = None
        self.machine.reset()
        self.grub.wait_for_menu(timeout=self.boot_timeout)

    def sulogin(self, password: str | None = None) -> None:
        """Answer systemd's 'Give root password for maintenance' (emergency or rescue mode)."""
        self.console.expect(MAINTENANCE_PROMPT, timeout=self.boot_timeout)
        self.console.sendline(password or self.password)
        try:
            self.console.expect(ROOT_PROMPT, timeout=30)
        except ConsoleTimeout:
            # sulogin flushes the terminal's input once it is ready to read: under load the password can
            # arrive before that and be thrown away. Typing it again is what a person would do.
            self.console.sendline(password or self.password)
            self.console.expect(ROOT_PROMPT, timeout=60)

    def shell_command(self, command: str, marker: str, timeout: float = 60.0) -> str:
        """Run a command at a plain root prompt (rescue or init=/bin/sh shells); the rest of the marker line."""
        self.console.sendline(f"echo {marker}-$((6*7)) {command}")
        self.console.expect(re.compile(marker.encode() + rb"-42 ([^\r\n]*)\r"), timeout=timeout)
        return self.console.match.group(1).decode(errors="replace")

    def close(self) -> None:
        self.console.close()
