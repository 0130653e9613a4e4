"""The rescue drills as a pytest suite: `pytest --pyargs harness.rescue_drills --sercon-image IMAGE`.

Each drill gets a guest of its own, restored from a snapshot taken at a logged-in shell (made
once per image by booting it, then cached), so a drill that leaves its guest broken cannot
spoil the next one, and no drill pays for a cold boot before it starts. Drills that cannot
apply to the image are reported as skipped, with the reason (e.g. no GRUB to catch).

Seen failing when the guest did not do what a runbook step expects: the panic drill on an image
without `sysctl`, the runaway drill when systemd stopped the console's getty along with the
OOM-killed hog (the drill now logs in again there, and still fails if the guest rebooted), the
broken-kernel drill when its boot left alone did not reach `login:`. On linux-initramfs the
fstab, password and broken-kernel drills skip (no systemd, no GRUB) and the other two pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from emulator import Machine
from harness import rescue_drills
from harness.grub import GrubGuest
from harness.linux import LinuxShell

pytestmark = [pytest.mark.guest, pytest.mark.slow]

#: Seconds for one boot: ~30 s for a UEFI disk alone, several times that on a loaded 2-core CI machine.
BOOT = 400.0


@pytest.fixture
def drill_guest(restored_guest: Machine, restored_shell: LinuxShell) -> Iterator[GrubGuest]:
    spec = restored_guest.spec
    guest = GrubGuest(restored_guest, user=(spec.user if spec else None) or "root",
                      password=(spec.password if spec else None) or "sercon", boot_timeout=BOOT,
                      shell=restored_shell)
    yield guest


def _run(drill: Callable[[GrubGuest], rescue_drills.DrillResult], guest: GrubGuest) -> rescue_drills.DrillResult:
    try:
        result = drill(guest)
    except rescue_drills.DrillSkipped as exc:
        pytest.skip(str(exc))
    print("\n".join(result.steps))
    return result


def test_fstab_missing_disk_then_emergency_shell(drill_guest: GrubGuest) -> None:
    result = _run(rescue_drills.fstab_emergency, drill_guest)
    assert result.recovered_by == "emergency shell"


def test_lost_root_password_reset_through_grub(drill_guest: GrubGuest) -> None:
    old = drill_guest.password
    result = _run(rescue_drills.lost_root_password, drill_guest)
    assert result.recovered_by == "init=/bin/bash" and drill_guest.password != old


def test_broken_default_kernel_previous_entry(drill_guest: GrubGuest) -> None:
    result = _run(rescue_drills.broken_default_kernel, drill_guest)
    assert result.recovered_by == "previous GRUB entry"


def test_runaway_memory_hog_sysrq(drill_guest: GrubGuest) -> None:
    """The shell must come back through SysRq f, without a reboot (REISUB, the drill's last resort, fails here)."""
    result = _run(rescue_drills.runaway_memory_hog, drill_guest)
    assert result.recovered_by == "sysrq f", result.steps


def test_panic_then_automatic_reboot(drill_guest: GrubGuest) -> None:
    result = _run(rescue_drills.panic_auto_reboot, drill_guest)
    assert result.recovered_by.startswith("kernel.panic=")
