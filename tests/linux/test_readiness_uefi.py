"""`sercon check` on UEFI disks: the grub-efi check reads GRUB's configuration from the ESP.

Under OVMF the firmware's console is on COM1, so GRUB configured for the screen only still shows
on the serial port, and the observed grub-serial check passes: only reading grub.cfg (on the ESP,
and the /boot/grub/grub.cfg it loads) catches it. The broken variant is debian-uefi built with
`grub_serial = false`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.images import build_image
from harness.readiness import check_image

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def test_uefi_disk_without_serial_grub_is_caught_with_the_fix(sercon_home: Path) -> None:
    spec = build_image("debian-uefi", overrides={"settings": {"grub_serial": False}}).spec
    report = check_image(spec, "root", "sercon", label="uefi-grub-no-serial", boot_timeout=400)
    efi = report.get("grub-efi")
    assert efi.status == "fail", efi
    assert "ESP:/EFI/debian/grub.cfg -> /boot/grub/grub.cfg" in efi.detail
    assert "no `serial` command" in efi.detail
    assert 'GRUB_TERMINAL="serial console"' in efi.fix and "update-grub" in efi.fix
    assert report.get("grub-serial").status == "pass"  # OVMF copies GRUB's screen to COM1: seeing is not enough
    assert [c.id for c in report.checks if c.status == "fail"] == ["grub-efi"]
