"""Power actions, panics and failures: each test gets a guest of its own, since each breaks it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from emulator import GuestDied, GuestNotRunning, Machine
from harness.console import Console, ConsoleTimeout
from harness.linux import LinuxShell
from harness.pytest_plugin import login

pytestmark = pytest.mark.guest

BOOT_BANNER = rb"Linux version \d"


def count(pattern: bytes, data: bytes) -> int:
    return len(re.findall(pattern, data))


def test_wrong_password_refused_then_right_one_works(fresh_guest: Machine) -> None:
    from harness.linux import LoginFailed

    shell = LinuxShell(Console.for_machine(fresh_guest))
    with pytest.raises(LoginFailed, match="wrong password"):
        shell.login("root", "not-the-password")
    shell.login("root", "sercon")
    assert shell.run("id -u").output == "0\n"


def test_reset_shows_a_new_boot_on_the_same_connection(fresh_guest: Machine) -> None:
    console = Console.for_machine(fresh_guest)
    console.expect("login: ", timeout=60)
    fresh_guest.reset()
    console.expect(BOOT_BANNER, timeout=60)  # the same socket sees the new boot
    console.expect("login: ", timeout=60)
    assert fresh_guest.boot == 2
    boots = [e for e in fresh_guest.events() if e["event"] == "boot"]
    assert len(boots) == 1 and boots[0]["reason"].startswith("reset")
    assert count(BOOT_BANNER, fresh_guest.read_log(0)) == 2
    # The log offset recorded for the reset is where the second boot starts.
    assert re.search(BOOT_BANNER, fresh_guest.read_log(boots[0]["offset"]))


def test_power_cycle_starts_a_new_qemu_and_keeps_both_boots(fresh_guest: Machine) -> None:
    console = Console.for_machine(fresh_guest)
    console.expect("login: ", timeout=60)
    # A new QEMU: a new process here, a new domain id on a libvirt host.
    which = "domain_id" if fresh_guest.info()["backend"] == "libvirt" else "qemu_pid"
    old_pid = fresh_guest.info()[which]
    fresh_guest.power_cycle()
    new_pid = fresh_guest.info()[which]
    assert new_pid and new_pid != old_pid
    if which == "qemu_pid":
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
    console.expect(BOOT_BANNER, timeout=60)
    console.expect("login: ", timeout=60)
    assert count(BOOT_BANNER, fresh_guest.read_log(0)) == 2
    kinds = [e["event"] for e in fresh_guest.events()]
    assert kinds.count("power_on") == 2 and "power_off" in kinds


def test_graceful_restart_through_acpi(fresh_guest: Machine) -> None:
    shell = login(fresh_guest)
    shell.run("echo ready")
    fresh_guest.restart(timeout=60)
    kinds = [e["event"] for e in fresh_guest.events()]
    assert "restart_requested" in kinds and "guest_poweroff" in kinds
    # The new boot: QEMU reset in place (a local process), or a new domain (a libvirt host).
    started = [e for e in fresh_guest.events() if e["event"] in ("boot", "power_on")]
    assert started[-1]["reason"] == "restart (graceful)"
    # The guest shut down cleanly (busybox init ran its shutdown) and booted again.
    shell.console.expect(BOOT_BANNER, timeout=60)
    shell.console.expect("login: ", timeout=60)
    assert fresh_guest.state == "running"


def test_guest_reboot_is_a_new_boot(fresh_guest: Machine) -> None:
    shell = login(fresh_guest)
    shell.console.send("reboot -f\r")
    shell.console.expect(BOOT_BANNER, timeout=60)
    shell.console.expect("login: ", timeout=60)
    boots = [e for e in fresh_guest.events() if e["event"] == "boot"]
    assert len(boots) == 1 and boots[0]["reason"] == "guest reboot"  # several RESET events, one boot


def test_output_without_any_client_is_logged(fresh_guest: Machine) -> None:
    shell = login(fresh_guest)
    shell.run("(sleep 2; echo written-while-detached-$((6*7))) >/dev/ttyS0 &")
    shell.console.close()  # nobody is attached now
    assert not fresh_guest.info()["clients"]
    deadline = time.monotonic() + 30
    while b"written-while-detached-42" not in fresh_guest.read_log(0):
        assert time.monotonic() < deadline, fresh_guest.log_tail()
        time.sleep(0.1)


def test_nmi_panics_with_unknown_nmi_panic(make_guest: object) -> None:
    machine: Machine = make_guest(append_extra="sysctl.kernel.unknown_nmi_panic=1")  # type: ignore[operator]
    console = Console.for_machine(machine)
    console.expect("login: ", timeout=60)
    since = time.time()
    machine.nmi()
    console.expect("Kernel panic - not syncing: NMI", timeout=30)
    panic = machine.wait_for_event("panic", timeout=30, since=since)
    assert panic["source"] in ("pvpanic", "console")


def test_qemu_killed_from_outside_is_reported_with_the_log_tail(fresh_guest: Machine) -> None:
    console = Console.for_machine(fresh_guest)
    console.expect("login: ", timeout=60)
    info = fresh_guest.info()
    if info["backend"] == "libvirt":  # the domain vanishes under sercon: destroyed with virsh
        assert fresh_guest.spec is not None and fresh_guest.spec.host
        subprocess.run(["virsh", "-q", "-c", fresh_guest.spec.host, "destroy", info["domain"]], check=True,
                       capture_output=True)
        how = "its libvirt domain was destroyed outside sercon"
    else:
        os.kill(info["qemu_pid"], signal.SIGKILL)
        how = "signal 9"
    died = fresh_guest.wait_for_event("qemu_exited", timeout=30, since=0)
    assert died["how"] == how
    with pytest.raises(GuestDied) as caught:
        fresh_guest.check_alive()
    assert how in str(caught.value) and "login:" in str(caught.value)
    with pytest.raises(GuestNotRunning, match="exited unexpectedly"):
        fresh_guest.nmi()
    with pytest.raises(ConsoleTimeout, match=how.split()[-1]):
        console.expect("never printed", timeout=1)
    # The log kept everything up to the kill, and the guest can be powered on again.
    assert b"login:" in fresh_guest.read_log(0)
    fresh_guest.power_cycle()
    console.expect(BOOT_BANNER, timeout=60)
    assert fresh_guest.state == "running"


def test_an_owner_killed_takes_its_qemu_with_it(fresh_guest: Machine) -> None:
    """No orphan QEMU keeps a guest running that nobody owns (parent-death signal, set by setpriv
    before QEMU runs). Seen to fail with `--pdeathsig KILL` left out of the spawn."""
    info = fresh_guest.info()
    if info["backend"] == "libvirt":
        pytest.skip("a libvirt domain is ended by AUTODESTROY: tests/libvirt covers it")
    qemu = Path(f"/proc/{info['qemu_pid']}")
    assert qemu.exists()
    os.kill(info["owner_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while qemu.exists() and not (qemu / "stat").read_text().split(") ")[-1].startswith("Z"):
        assert time.monotonic() < deadline, "QEMU outlived its owner"
        time.sleep(0.1)


def test_sysrq_masked_by_kernel_sysrq_16_is_reported(make_guest: object) -> None:
    machine: Machine = make_guest(append_extra="sysctl.kernel.sysrq=16")  # type: ignore[operator]
    shell = login(machine)
    assert shell.run("cat /proc/sys/kernel/sysrq").output == "16\n"
    start = len(machine.read_log(0))
    machine.sysrq("m")  # memory dump: not allowed by mask 16 (sync only)
    shell.console.expect("This sysrq operation is disabled", timeout=30)
    assert b"Show Memory" not in machine.read_log(start)


def test_disk_overlay_leaves_the_image_untouched(make_guest: object, tmp_path: object) -> None:
    """The guest writes its disk and reads its own write back; the image file stays byte for byte.

    Attaching the image itself instead of the owner's overlay (disk_snapshot=False) fails this.
    """
    import hashlib
    from pathlib import Path

    disk = Path(str(tmp_path)) / "scratch.raw"
    disk.write_bytes(b"\0" * (4 << 20))  # no format given: the owner detects raw for its overlay
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    machine: Machine = make_guest(disk=str(disk), disk_format=None, disk_snapshot=True)  # type: ignore[operator]
    if machine.info()["backend"] == "local":  # a libvirt host gets a copy of the image, under an overlay volume
        assert machine.folder is not None and "overlay.qcow2" in (machine.folder / "qemu.log").read_text()
    shell = login(machine)
    wrote = shell.run("printf sercon-wrote-this | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null && "
                      "dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 16")
    assert wrote.exit_status == 0 and wrote.output == "sercon-wrote-this"[:16], wrote
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == digest  # the image never saw the write
