"""`sercon up IMAGE --host URI` then sysrq, nmi, reset, log and down from the CLI, on qemu:///system
and on qemu+ssh:// through a real sshd; and the errors a user meets: an unknown URI scheme, a host
that refuses, a missing pool, an upload that fails, a domain destroyed outside sercon.

How each was seen to fail, the code broken once on purpose: the flow test with the backend's console
callback dropping its bytes (no `login:` in the log); the vanished-domain test with the lifecycle
callback ignoring DESTROYED (no qemu_exited event, the test times out); the pool and upload tests
with their errors' text replaced by libvirt's own message.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.guest


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = Path(f"/tmp/sercon-lv-{uuid.uuid4().hex[:8]}")
    yield home
    sercon(home, "down", "--all")


def sercon(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emulator.cli", *args], env={**os.environ, "SERCON_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(log: Path, pattern: bytes, since: int = 0, timeout: float = 90) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = log.read_bytes()[since:] if log.exists() else b""
        if re.search(pattern, data):
            return data
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {log} within {timeout}s; it ends:\n{log.read_bytes()[-600:]!r}")


@contextlib.contextmanager
def home_env(home: Path) -> Iterator[None]:
    """This process's Machine calls see the guests of `home` (as the CLI runs above do)."""
    previous = os.environ.get("SERCON_HOME")
    os.environ["SERCON_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SERCON_HOME"]
        else:
            os.environ["SERCON_HOME"] = previous


def guest_info(home: Path, name: str) -> dict[str, object]:
    with home_env(home):
        return Machine.attach(name).info()


def domains(uri: str) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    finally:
        conn.close()


def test_up_sysrq_nmi_reset_log_down(host: str, home: Path) -> None:
    up = sercon(home, "up", "linux-initramfs", "--name", "remote", "--host", host)
    assert up.returncode == 0, up.stderr
    log = home / "guests" / "remote" / "serial.log"
    wait_for(log, rb"login: ")
    listed = sercon(home, "ls").stdout
    assert re.search(r"remote\s+running\s+1\s+qemu(\+ssh)?://", listed), listed
    domain = guest_info(home, "remote")["domain"]
    assert domain in domains(host)
    mark = log.stat().st_size
    assert sercon(home, "sysrq", "remote", "h").returncode == 0
    wait_for(log, rb"show-memory-usage\(m\)", since=mark, timeout=30)
    mark = log.stat().st_size
    assert sercon(home, "nmi", "remote").returncode == 0
    wait_for(log, rb"NMI received for unknown reason", since=mark, timeout=30)
    mark = log.stat().st_size
    assert sercon(home, "reset", "remote").returncode == 0
    wait_for(log, rb"Linux version \d", since=mark)
    wait_for(log, rb"login: ", since=mark)
    shown = sercon(home, "log", "remote")
    assert shown.returncode == 0 and shown.stdout.count("Linux version") == 2  # both boots, one log
    events = sercon(home, "events", "remote").stdout
    assert "sysrq" in events and "nmi" in events and re.search(r"boot 2 .* boot ", events), events
    assert sercon(home, "down", "remote").returncode == 0
    assert not [d for d in domains(host) if d == domain]  # the domain is gone from the host


def test_an_unknown_scheme_is_one_line(home: Path) -> None:
    result = sercon(home, "up", "linux-initramfs", "--host", "vbox:///system")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown libvirt URI scheme 'vbox'" in result.stderr


def test_a_host_that_refuses_is_one_line(home: Path, ssh_host: str) -> None:
    refused = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:9", ssh_host)  # the discard port: nothing listens
    result = sercon(home, "up", "linux-initramfs", "--name", "refused", "--host", refused)
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and "cannot reach libvirt host qemu+ssh://root@127.0.0.1:9/system" in line
    assert "keyfile" not in line  # key paths stay out of messages


def test_a_missing_pool_names_the_commands_that_make_it(home: Path, local_host: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERCON_LIBVIRT_POOL", "sercon-no-such-pool")
    result = sercon(home, "up", "linux-initramfs", "--name", "nopool", "--host", local_host)
    assert result.returncode == 2
    assert "has no storage pool 'sercon-no-such-pool'" in result.stderr
    assert "pool-define-as sercon-no-such-pool dir" in result.stderr


def test_an_upload_that_fails_is_one_line(home: Path, local_host: str, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """A pool whose folder is gone: libvirt cannot create the volume the image goes to."""
    name = f"sercon-broken-{uuid.uuid4().hex[:6]}"
    target = tmp_path / name
    target.mkdir()
    conn = libvirt.open(local_host)
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>", 0)
    try:
        target.rmdir()
        monkeypatch.setenv("SERCON_LIBVIRT_POOL", name)
        kernel = tmp_path / "vmlinuz"  # a fresh file: not uploaded before
        kernel.write_bytes(b"\x7fELF" + os.urandom(4096))
        result = sercon(home, "up", str(kernel), "--name", "badupload", "--host", local_host)
        assert result.returncode == 2
        assert f"uploading {kernel} to pool '{name}' on qemu:///system failed:" in result.stderr
    finally:
        pool.destroy()
        conn.close()


def test_a_domain_destroyed_outside_sercon_is_reported(host: str, home: Path) -> None:
    assert sercon(home, "up", "linux-initramfs", "--name", "vanish", "--host", host).returncode == 0
    log = home / "guests" / "vanish" / "serial.log"
    wait_for(log, rb"login: ")
    with home_env(home):
        machine = Machine.attach("vanish")
        domain = str(machine.info()["domain"])
        subprocess.run(["virsh", "-q", "-c", host, "destroy", domain], check=True, capture_output=True)
        died = machine.wait_for_event("qemu_exited", timeout=30, since=0)
        assert died["how"] == "its libvirt domain was destroyed outside sercon"
        assert machine.state == "dead"
        refused = sercon(home, "nmi", "vanish")
        assert refused.returncode == 2 and "destroyed outside sercon" in refused.stderr and "login:" in refused.stderr
        assert "serial_taken" not in sercon(home, "events", "vanish").stdout  # not mistaken for a takeover
        assert sercon(home, "power-cycle", "vanish").returncode == 0  # and it starts again
        wait_for(log, rb"(?s)Linux version \d.*Linux version \d", timeout=90)


def test_virsh_console_force_takes_com1_and_the_owner_takes_it_back(local_host: str, home: Path) -> None:
    """Someone runs `virsh console --force` on the host: the owner records that COM1 was taken,
    and takes it back once they leave; the guest is never disturbed. Seen to fail with the owner
    not reopening the console (no serial_back, and nothing after it in the log)."""
    import pexpect

    assert sercon(home, "up", "linux-initramfs", "--name", "taken", "--host", local_host).returncode == 0
    log = home / "guests" / "taken" / "serial.log"
    wait_for(log, rb"login: ")
    domain = str(guest_info(home, "taken")["domain"])
    virsh = pexpect.spawn("virsh", ["-c", local_host, "console", "--force", domain], timeout=30)
    try:
        virsh.expect("Escape character is")
        deadline = time.monotonic() + 30
        while "serial_taken" not in sercon(home, "events", "taken").stdout:
            assert time.monotonic() < deadline, "no serial_taken event"
            time.sleep(0.5)
        virsh.send("\r")
        virsh.expect("login: ")  # the outside console has the guest now
    finally:
        virsh.sendcontrol("]")  # virsh's escape: leave the console
        virsh.expect(pexpect.EOF)
    deadline = time.monotonic() + 30
    while "serial_back" not in sercon(home, "events", "taken").stdout:
        assert time.monotonic() < deadline, "the owner did not take COM1 back"
        time.sleep(0.5)
    mark = log.stat().st_size
    assert sercon(home, "sysrq", "taken", "h").returncode == 0
    wait_for(log, rb"show-memory-usage\(m\)", since=mark, timeout=30)  # the log is live again


def test_a_secure_boot_uefi_guest_on_a_libvirt_host(local_host: str, home: Path) -> None:
    """The UEFI Secure Boot image, as built for local QEMU, boots on a libvirt host with Secure Boot
    on; its variable store is the domain's own and goes with it. Seen to fail (run by hand, before
    the fix) with the CODE flash uploaded 0600: QEMU, as libvirt-qemu, could not open it. The
    flash's SMM protection (`secure='yes'`) is not something this test can see."""
    up = sercon(home, "up", "debian-uefi-secureboot", "--name", "sb", "--host", local_host)
    assert up.returncode == 0, up.stderr
    log = home / "guests" / "sb" / "serial.log"
    data = wait_for(log, rb"login: ", timeout=240)
    assert b"Secure boot enabled" in data
    domain = str(guest_info(home, "sb")["domain"])
    assert sercon(home, "down", "sb").returncode == 0
    conn = libvirt.open(local_host)
    try:
        pool = conn.storagePoolLookupByName("sercon")
        pool.refresh(0)
        assert not [v for v in pool.listVolumes() if v.startswith(domain)]  # no overlay, no VARS left
    finally:
        conn.close()


def test_a_disk_guest_snapshot_on_a_libvirt_host(local_host: str, home: Path) -> None:
    """A Debian disk guest on a libvirt host: its snapshot keeps the disk as it was (a frozen
    overlay in the pool), a new guest from it sees the file written before, the original carries on
    in an overlay of its own, and neither sees what the other writes afterwards. Seen to fail with the
    restore given no overlay of its own (libvirt could not restore the twin onto the frozen disk)."""
    from emulator import resolve_image
    from harness.console import Console
    from harness.linux import LinuxShell
    from harness.pytest_plugin import login

    try:
        with home_env(home):
            spec = resolve_image("debian-grub", host=local_host)
            first = Machine(spec, name="disk-first").start()
            try:
                shell = login(first)
                shell.run("echo before-the-snapshot > /root/marker && sync")
                meta = first.snapshot("libvirt-disk", nonce=shell.nonce)
                assert meta["host_disk"] and meta["ram"] == "host"
                assert shell.run("cat /root/marker").output == "before-the-snapshot\n"  # it carries on
                shell.run("echo first-only > /root/after && sync")
                twin = Machine(spec, name="disk-twin", from_snapshot="libvirt-disk").start()
                try:
                    twin_shell = LinuxShell.resume(Console.for_machine(twin, from_offset=None), shell.nonce)
                    assert twin_shell.run("cat /root/marker").output == "before-the-snapshot\n"
                    assert twin_shell.run("test -e /root/after; echo $?").output == "1\n"
                    twin_shell.run("echo twin-only > /root/twin && sync")
                    assert shell.run("test -e /root/twin; echo $?").output == "1\n"
                finally:
                    twin.stop()
            finally:
                first.stop()
    finally:
        sercon(home, "snapshot", "rm", "libvirt-disk")
