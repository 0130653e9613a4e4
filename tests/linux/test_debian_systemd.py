"""Console scenarios on a real distribution boot: Debian with systemd (image `debian-systemd`).

One guest is shared by the tests that only log in, run commands and send keys that leave it
running; a second guest takes the destructive scenarios (reboot, SysRq b, NMI panic, reset, power
cycle), each of which ends by logging in again on the new boot, so the next one starts from a
shell. Everything waits on console text with generous timeouts (TCG on 2 cores: ~16 s per boot,
up to 3x under load); nothing sleeps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.errors import SerconError
from emulator.images import build_image
from harness.console import Console
from harness.linux import LinuxShell

pytestmark = [pytest.mark.guest, pytest.mark.slow]

IMAGE = "debian-systemd"
BOOT = 180.0  # seconds: a ~16 s boot, with room for a loaded CI machine
KERNEL_BANNER = re.compile(rb"Linux version \d")


def _start() -> Machine:
    return Machine(build_image(IMAGE).spec).start()


def _login(console: Console) -> LinuxShell:
    shell = LinuxShell(console)
    shell.login("root", "sercon", timeout=BOOT)
    return shell


def _boot_id(shell: LinuxShell) -> str:
    return shell.run("cat /proc/sys/kernel/random/boot_id", check=True).output.strip()


@pytest.fixture(scope="module")
def guest(sercon_home: Path) -> Iterator[Machine]:
    machine = _start()
    yield machine
    machine.stop()


@pytest.fixture(scope="module")
def shell(guest: Machine) -> Iterator[LinuxShell]:
    sh = _login(Console.for_machine(guest, from_offset=0))
    yield sh
    sh.console.close()


class Rebooter:
    """The destructive-tests guest: a console that stays open across boots, and the current shell."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.console = Console.for_machine(machine, from_offset=0)
        self.shell = _login(self.console)

    def ready(self) -> LinuxShell:
        """The shell of the current boot; logs in again if a previous test left the guest elsewhere."""
        try:
            self.shell.run("true", timeout=10)
        except SerconError:
            self.shell = _login(self.console)
        return self.shell

    def new_boot(self) -> str:
        """Wait for the next kernel banner and login prompt on the same console; log in; the new boot_id."""
        self.console.expect(KERNEL_BANNER, timeout=BOOT)
        self.shell = _login(self.console)
        return _boot_id(self.shell)


@pytest.fixture(scope="module")
def rebooter(sercon_home: Path) -> Iterator[Rebooter]:
    machine = _start()
    r = Rebooter(machine)
    yield r
    r.console.close()
    machine.stop()


# ------------------------------------------------------------ shared guest


def test_login_and_run_on_systemd(shell: LinuxShell) -> None:
    state = shell.run("systemctl is-system-running --wait", timeout=120).output.strip()
    assert state in ("running", "degraded"), state
    assert shell.run("cat /proc/1/comm").output.strip() == "systemd"
    assert shell.run("false").exit_status == 1
    assert shell.run("echo $((6 * 7))").output.strip() == "42"


def test_getty_on_ttys0_and_serial_uart(shell: LinuxShell) -> None:
    assert shell.run("systemctl is-active serial-getty@ttyS0.service").output.strip() == "active"
    assert shell.run("tty").output.strip() == "/dev/ttyS0"
    assert "uart:16550A" in shell.run("cat /proc/tty/driver/serial").output
    cmdline = shell.run("cat /proc/cmdline").output.split()
    assert [w for w in cmdline if w.startswith("console=")][-1].startswith("console=ttyS0")


def test_sysrq_over_serial(guest: Machine, shell: LinuxShell) -> None:
    assert shell.run("cat /proc/sys/kernel/sysrq").output.strip() == "1"
    guest.sysrq("h")
    shell.console.expect(re.compile(rb"sysrq: HELP"), timeout=30)
    assert shell.run("true").ok


def test_sysrq_masked_by_systemd_default_is_reported(guest: Machine, shell: LinuxShell) -> None:
    """kernel.sysrq=16 (systemd's upstream default) allows only sync: other keys are refused, visibly."""
    shell.run("echo 16 > /proc/sys/kernel/sysrq", check=True)
    try:
        guest.sysrq("m")
        shell.console.expect(re.compile(rb"This sysrq operation is disabled"), timeout=30)
        guest.sysrq("s")  # sync is what 16 allows
        shell.console.expect(re.compile(rb"sysrq: Emergency Sync"), timeout=30)
    finally:
        shell.run("echo 1 > /proc/sys/kernel/sysrq", check=True)


def test_nmi_without_panic_setting_is_survived(guest: Machine, shell: LinuxShell) -> None:
    shell.run("echo 0 > /proc/sys/kernel/unknown_nmi_panic", check=True)
    try:
        guest.nmi()
        shell.console.expect(re.compile(rb"NMI received for unknown reason"), timeout=30)
        shell.console.expect(re.compile(rb"Dazed and confused, but trying to continue"), timeout=30)
        assert shell.run("echo still-here").output.strip() == "still-here"
    finally:
        shell.run("echo 1 > /proc/sys/kernel/unknown_nmi_panic", check=True)


def test_serial_log_has_the_whole_boot(guest: Machine, shell: LinuxShell) -> None:
    log = guest.read_log(0)
    assert KERNEL_BANNER.search(log)
    assert re.search(rb"Reached target[^\n]*Multi-User System", log)
    assert re.search(rb"sercon-debian login: ", log)


# ------------------------------------------------------- destructive guest


def test_systemctl_reboot_is_a_new_boot_on_the_same_console(rebooter: Rebooter) -> None:
    before = _boot_id(rebooter.ready())
    boots = rebooter.machine.boot
    rebooter.console.sendline("systemctl reboot")
    rebooter.console.expect(re.compile(rb"reboot: Restarting system"), timeout=BOOT)
    assert rebooter.new_boot() != before
    assert rebooter.machine.boot == boots + 1  # exactly one new boot, counted by the owner


def test_sysrq_b_reboots(rebooter: Rebooter) -> None:
    before = _boot_id(rebooter.ready())
    rebooter.machine.sysrq("b")
    rebooter.console.expect(re.compile(rb"sysrq: Resetting"), timeout=30)
    assert rebooter.new_boot() != before


def test_nmi_panics_and_the_guest_comes_back_by_itself(rebooter: Rebooter) -> None:
    sysctl = rebooter.ready().run("cat /proc/sys/kernel/unknown_nmi_panic /proc/sys/kernel/panic").output.split()
    assert sysctl == ["1", "10"]
    before = _boot_id(rebooter.ready())
    since = time.time()
    rebooter.machine.nmi()
    rebooter.console.expect(re.compile(rb"Kernel panic - not syncing: NMI: Not continuing"), timeout=30)
    panic = rebooter.machine.wait_for_event("panic", timeout=30, since=since)  # pvpanic or the console text
    # kernel.panic=10: nobody resets it; the kernel reboots by itself (its "Rebooting in 10 seconds"
    # line is not always flushed to the console from NMI context, so the new boot is the proof).
    assert rebooter.new_boot() != before
    assert any(e["event"] == "boot" and e["time"] > panic["time"] and e.get("qemu_reason") == "guest-reset"
               for e in rebooter.machine.events())


def test_reset_keeps_the_console_open(rebooter: Rebooter) -> None:
    before = _boot_id(rebooter.ready())
    rebooter.machine.reset()
    assert rebooter.new_boot() != before


def test_power_cycle_boots_again_on_the_same_console(rebooter: Rebooter) -> None:
    before = _boot_id(rebooter.ready())
    rebooter.machine.power_cycle()
    assert rebooter.new_boot() != before
    assert rebooter.shell.run("systemctl is-active serial-getty@ttyS0.service").output.strip() == "active"
