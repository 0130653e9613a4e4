"""Secure Boot on the serial console: OVMF with Microsoft's keys -> signed shim -> signed GRUB -> signed kernel.

The guest says Secure Boot is on (the SecureBoot UEFI variable is 1, the kernel is locked down),
and the chain is enforced: a kernel whose signature was stripped is refused by GRUB through shim,
with the refusal on the serial console, while the signed kernel loads from the same GRUB prompt.

Checked against a break: the same commands on debian-uefi (no Secure Boot) load the stripped
kernel without an error, so the refusal test fails there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.images import build_image
from harness.grub import KERNEL_BANNER, GrubGuest

pytestmark = [pytest.mark.guest, pytest.mark.slow]

BOOT = 400.0
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
#: Zero the PE Certificate Table entry (data directory 4 of a PE32+ header): the kernel is then unsigned.
STRIP_SIGNATURE = ("cp /boot/vmlinuz-$(uname -r) /boot/vmlinuz-unsigned && "
                   "pe=$(od -An -t u4 -j 60 -N 4 /boot/vmlinuz-unsigned) && "
                   "dd if=/dev/zero of=/boot/vmlinuz-unsigned bs=1 seek=$((pe + 168)) count=8 conv=notrunc "
                   "status=none && sync && od -An -t u4 -j $((pe + 168)) -N 8 /boot/vmlinuz-unsigned")


@pytest.fixture(scope="module")
def secure(sercon_home: Path) -> Iterator[GrubGuest]:
    machine = Machine(build_image("debian-uefi-secureboot").spec).start()
    guest = GrubGuest(machine, boot_timeout=BOOT)
    yield guest
    guest.close()
    machine.stop()


def test_guest_reports_secure_boot_enabled(secure: GrubGuest) -> None:
    shell = secure.login()
    spec = secure.machine.spec
    assert spec is not None and spec.secure_boot and spec.machine == "q35"
    # 4 bytes of attributes, then the value.
    assert shell.run(f"od -An -t u1 {SECURE_BOOT_VAR}").output.split()[-1] == "1"
    assert "Secure boot enabled" in shell.run("dmesg | grep -i secureboot").output
    assert "locked down" in shell.run("dmesg | grep -i 'locked down'").output


def test_unsigned_kernel_is_refused_on_the_serial_console(secure: GrubGuest) -> None:
    shell = secure.logged_in()
    assert shell.run(STRIP_SIGNATURE).output.split() == ["0", "0"]
    release = shell.run("uname -r").output.strip()
    secure.reset_to_menu()
    secure.grub.command_line()
    refused = secure.grub.command("linux (hd0,gpt2)/boot/vmlinuz-unsigned root=/dev/vda2 console=ttyS0,115200n8")
    assert "bad shim signature" in refused
    assert b"error: bad shim signature" in secure.machine.read_log(-20000)  # on the console, for a person to read
    # The same prompt loads the signed kernel: the refusal is about the signature, not the path.
    assert secure.grub.command(f"linux (hd0,gpt2)/boot/vmlinuz-{release} root=/dev/vda2 rw "
                               "console=ttyS0,115200n8") == ""
    assert secure.grub.command(f"initrd (hd0,gpt2)/boot/initrd.img-{release}") == ""
    secure.console.sendline("boot")
    secure.console.expect(KERNEL_BANNER, timeout=BOOT)
    shell = secure.login()
    assert shell.run("cat /proc/cmdline").output.startswith("BOOT_IMAGE=(hd0,gpt2)/boot/vmlinuz-")
    assert shell.run(f"od -An -t u1 {SECURE_BOOT_VAR}").output.split()[-1] == "1"
