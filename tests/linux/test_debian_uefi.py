"""Console scenarios on a UEFI boot: OVMF on q35 (console on COM1) -> GRUB EFI on serial -> kernel -> systemd.

The debian-grub scenarios on `debian-uefi` (GRUB's menu caught after a reset, the kernel line
edited to the rescue target and to init=/bin/sh, SysRq, NMI, restart, power cycle) and the
firmware's own boot manager reached over COM1. One guest, one console kept open across every
boot, so the tests run in file order and each starts from whatever boot the previous one left.

Seen failing: the editing tests when GRUB's editor screen was read before the entry was drawn,
the restart test on an image without systemd-logind (the ACPI power button did nothing); the
grub-efi assertion is the check that fails on the `grub_serial = false` variant
(test_readiness_uefi.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.images import build_image
from harness.grub import KERNEL_BANNER, GrubGuest
from harness.readiness import grub_efi_check
from harness.uefi import OvmfConsole

pytestmark = [pytest.mark.guest, pytest.mark.slow]

BOOT = 300.0  # seconds: a ~30 s boot, with room for a loaded CI machine
FIRMWARE = re.compile(rb"BdsDxe: (?:loading|starting) Boot\d+")


@pytest.fixture(scope="module")
def uefi(sercon_home: Path) -> Iterator[GrubGuest]:
    machine = Machine(build_image("debian-uefi").spec).start()
    guest = GrubGuest(machine, boot_timeout=BOOT)
    yield guest
    guest.close()
    machine.stop()


def test_ovmf_then_grub_efi_on_serial_then_login(uefi: GrubGuest) -> None:
    """Fails if OVMF's console is not on COM1, GRUB is not on serial or the kernel is not UEFI-booted."""
    uefi.console.expect(FIRMWARE, timeout=BOOT)
    uefi.grub.wait_for_menu(timeout=BOOT)
    uefi.console.expect(KERNEL_BANNER, timeout=BOOT)
    shell = uefi.login()
    cmdline = shell.run("cat /proc/cmdline").output
    assert "BOOT_IMAGE=/boot/vmlinuz-" in cmdline
    assert cmdline.split()[-1].startswith("console=ttyS0")
    assert shell.run("test -d /sys/firmware/efi/efivars").ok  # booted by UEFI, not SeaBIOS
    log = uefi.machine.read_log(0)
    assert FIRMWARE.search(log).start() < log.index(b"GNU GRUB") < KERNEL_BANNER.search(log).start()  # type: ignore[union-attr]
    assert uefi.machine.spec is not None and uefi.machine.spec.machine == "q35"
    efi = grub_efi_check(shell)  # sercon check's reading of the ESP's grub.cfg
    assert (efi.status, efi.detail) == ("pass", "GRUB EFI's serial terminal is set up in "
                                                "ESP:/EFI/debian/grub.cfg -> /boot/grub/grub.cfg")


def test_sysrq_over_serial(uefi: GrubGuest) -> None:
    shell = uefi.logged_in()
    uefi.machine.sysrq("h")
    uefi.console.expect(re.compile(rb"sysrq: HELP : "), timeout=30)
    assert shell.run("true").ok


def test_ovmf_boot_manager_over_com1(uefi: GrubGuest) -> None:
    """Reset, Esc during OVMF's wait, Boot Manager, pick the disk: GRUB, then a login on the new boot."""
    uefi.shell = None
    uefi.machine.reset()
    ovmf = OvmfConsole(uefi.console)
    ovmf.enter_setup(timeout=BOOT)
    assert b'BdsDxe: loading Boot0000 "UiApp"' in uefi.console.before + ovmf.screen
    entries = ovmf.open_boot_manager()
    assert "EFI Internal Shell" in entries
    disk = next(e for e in entries if e.startswith("UEFI") and "Shell" not in e)
    ovmf.boot(disk, entries)
    uefi.grub.wait_for_menu(timeout=BOOT)
    assert uefi.login().run("cat /proc/sys/kernel/random/boot_id").ok


def test_reset_catches_grub_and_edits_the_kernel_line_to_rescue(uefi: GrubGuest) -> None:
    uefi.reset_to_menu()
    original = uefi.grub.edit_kernel_line(" systemd.unit=rescue.target")
    assert original.startswith("linux /boot/vmlinuz-") and "console=ttyS0" in original
    uefi.sulogin()
    state = uefi.shell_command("$(systemctl is-system-running) $(cat /proc/cmdline)", "RESCUE")
    assert state.startswith("maintenance ")
    assert state.endswith("systemd.unit=rescue.target")


def test_reset_and_init_bin_sh_gives_a_root_shell_as_pid_1(uefi: GrubGuest) -> None:
    uefi.reset_to_menu()
    uefi.grub.edit_kernel_line(" init=/bin/sh")
    uefi.console.expect(re.compile(rb"job control turned off"), timeout=BOOT)
    assert uefi.shell_command("$$ $(id -u)", "INITSH") == "1 0"


def test_nmi_panics_and_the_guest_comes_back_through_ovmf(uefi: GrubGuest) -> None:
    """kernel.unknown_nmi_panic=1 and kernel.panic=10 (the image's sysctl): an NMI panics, the guest reboots alone."""
    uefi.reset_to_menu()
    uefi.login()
    uefi.shell = None
    uefi.machine.nmi()
    uefi.console.expect(re.compile(rb"Kernel panic - not syncing: NMI"), timeout=60)
    uefi.console.expect(FIRMWARE, timeout=BOOT)  # the reboot goes through the firmware again
    uefi.grub.wait_for_menu(timeout=BOOT)
    uefi.login()
    assert any(e["event"] == "panic" for e in uefi.machine.events())


def test_restart_and_power_cycle_boot_through_ovmf_again(uefi: GrubGuest) -> None:
    uefi.logged_in()
    uefi.shell = None
    uefi.machine.restart(timeout=120)
    uefi.grub.wait_for_menu(timeout=BOOT)
    uefi.login()
    uefi.shell = None
    uefi.machine.power_cycle()
    uefi.console.expect(FIRMWARE, timeout=BOOT)
    uefi.grub.wait_for_menu(timeout=BOOT)
    assert uefi.login().run("test -d /sys/firmware/efi").ok
    events = [e["event"] for e in uefi.machine.events()]
    assert "restart_requested" in events and "power_off" in events
