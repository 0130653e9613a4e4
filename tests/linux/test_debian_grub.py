"""Console scenarios on a whole-disk boot: SeaBIOS -> GRUB on serial -> kernel -> systemd (`debian-grub`).

What a cloud serial console is for when an image will not boot normally: reset with the console
open, catch GRUB's menu, edit the kernel line, get a root shell. One guest, one console kept open
across every boot; each test waits on console text (GRUB's countdown, the kernel banner, prompts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.images import build_image
from harness.console import Console, ConsoleTimeout
from harness.grub import GrubConsole
from harness.linux import LinuxShell

pytestmark = [pytest.mark.guest, pytest.mark.slow]

BOOT = 240.0  # seconds: a ~24 s boot, with room for a loaded CI machine
KERNEL_BANNER = re.compile(rb"Linux version \d")
ROOT_PROMPT = re.compile(rb"root@[\w.-]+:~# ")


class Grubbed:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.console = Console.for_machine(machine, from_offset=0)
        self.grub = GrubConsole(self.console)
        #: The logged-in shell of the current boot, if any (a reset or reboot ends it).
        self.shell: LinuxShell | None = None

    def login(self) -> LinuxShell:
        self.shell = LinuxShell(self.console)
        self.shell.login("root", "sercon", timeout=BOOT)
        return self.shell

    def shell_command(self, command: str, marker: str, timeout: float = 60.0) -> str:
        """Run a command at a plain root prompt (rescue or init=/bin/sh shells); the rest of the marker line."""
        self.console.sendline(f"echo {marker}-$((6*7)) {command}")
        self.console.expect(re.compile(marker.encode() + rb"-42 ([^\r\n]*)\r"), timeout=timeout)
        return self.console.match.group(1).decode(errors="replace")


@pytest.fixture(scope="module")
def grubbed(sercon_home: Path) -> Iterator[Grubbed]:
    machine = Machine(build_image("debian-grub").spec).start()
    g = Grubbed(machine)
    yield g
    g.console.close()
    machine.stop()


def test_grub_menu_on_serial_then_kernel_then_login(grubbed: Grubbed) -> None:
    grubbed.grub.wait_for_menu(timeout=BOOT)  # the countdown is on the serial line
    grubbed.console.expect(KERNEL_BANNER, timeout=BOOT)
    shell = grubbed.login()
    cmdline = shell.run("cat /proc/cmdline").output
    assert "BOOT_IMAGE=/boot/vmlinuz-" in cmdline  # GRUB, not -kernel, started it
    assert cmdline.split()[-1].startswith("console=ttyS0")
    log = grubbed.machine.read_log(0)
    assert log.index(b"GNU GRUB") < KERNEL_BANNER.search(log).start()  # type: ignore[union-attr]


def test_systemctl_reboot_shows_grub_again(grubbed: Grubbed) -> None:
    shell = grubbed.shell or grubbed.login()
    before = shell.run("cat /proc/sys/kernel/random/boot_id").output.strip()
    grubbed.shell = None
    grubbed.console.sendline("systemctl reboot")
    grubbed.console.expect(re.compile(rb"reboot: Restarting system"), timeout=BOOT)
    grubbed.grub.wait_for_menu(timeout=BOOT)
    grubbed.console.expect(KERNEL_BANNER, timeout=BOOT)
    assert grubbed.login().run("cat /proc/sys/kernel/random/boot_id").output.strip() != before


def test_reset_catches_grub_and_edits_the_kernel_line_to_rescue(grubbed: Grubbed) -> None:
    """As cloud docs say: reset with the console open, `e` in GRUB, add systemd.unit=rescue.target, Ctrl-X."""
    grubbed.shell = None
    grubbed.machine.reset()
    grubbed.grub.wait_for_menu(timeout=BOOT)
    original = grubbed.grub.edit_kernel_line(" systemd.unit=rescue.target")
    assert original.startswith("linux /boot/vmlinuz-") and "console=ttyS0" in original
    grubbed.console.expect(re.compile(rb"Give root password for maintenance\s+\(or press Control-D to continue\): "),
                           timeout=BOOT)
    grubbed.console.sendline("sercon")
    try:
        grubbed.console.expect(ROOT_PROMPT, timeout=30)
    except ConsoleTimeout:
        # sulogin flushes the terminal's input once it is ready to read: under load the password can
        # arrive before that and be thrown away. Typing it again is what a person would do.
        grubbed.console.sendline("sercon")
        grubbed.console.expect(ROOT_PROMPT, timeout=60)
    state = grubbed.shell_command("$(systemctl is-system-running) $(cat /proc/cmdline)", "RESCUE")
    assert state.startswith("maintenance ")
    assert state.endswith("systemd.unit=rescue.target")


def test_reset_and_init_bin_sh_gives_a_root_shell_as_pid_1(grubbed: Grubbed) -> None:
    grubbed.shell = None
    grubbed.machine.reset()
    grubbed.grub.wait_for_menu(timeout=BOOT)
    grubbed.grub.edit_kernel_line(" init=/bin/sh")
    grubbed.console.expect(re.compile(rb"job control turned off"), timeout=BOOT)
    assert grubbed.shell_command("$$ $(id -u)", "INITSH") == "1 0"  # the shell is PID 1, as root
