"""Snapshots: a fresh logged-in guest per test in a fraction of a second, isolated from the last.

The `restored_*` fixtures load a snapshot taken once at a logged-in shell (see
emulator/snapshots.py for why a migration stream and not qcow2 internal snapshots).
"""

from __future__ import annotations

import json
import shutil

import pytest

from emulator import Machine
from emulator.errors import SnapshotError
from emulator.snapshots import folder_for
from harness.console import Console
from harness.linux import GuestPanicked, LinuxShell

pytestmark = pytest.mark.guest


def test_restored_guest_is_logged_in_and_recorded(restored_guest: Machine, restored_shell: LinuxShell) -> None:
    assert restored_shell.run("id -u").output == "0\n"
    assert restored_shell.run("cat /proc/tty/driver/serial | grep -c 16550A").output == "1\n"
    kinds = [e["event"] for e in restored_guest.events()]
    assert kinds[:2] == ["power_on", "restored"]
    assert restored_guest.events()[1]["snapshot"] == "logged-in"
    assert restored_guest.info()["snapshot"]["extra"]["nonce"] == restored_shell.nonce


def test_a_test_that_crashes_its_guest(restored_shell: LinuxShell) -> None:
    restored_shell.run("echo dirty > /tmp/left-behind")
    with pytest.raises(GuestPanicked):
        restored_shell.run("echo c > /proc/sysrq-trigger", timeout=30)


def test_the_next_test_gets_a_clean_guest(restored_shell: LinuxShell) -> None:
    assert restored_shell.run("ls /tmp/left-behind").exit_status != 0
    assert restored_shell.run("echo fine").output == "fine\n"


def test_restore_into_a_running_guest_keeps_the_console(restored_guest: Machine, restored_shell: LinuxShell) -> None:
    restored_shell.run("cd /proc; export X=changed")
    offset = len(restored_guest.read_log(0))
    restored_guest.restore("logged-in")
    # The same console connection, and the shell is back as it was in the snapshot.
    again = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    assert again.run("echo ${X:-unset}").output == "unset\n"
    assert restored_guest.read_log(0)[:offset]  # the log before the restore is kept
    assert [e["event"] for e in restored_guest.events()].count("restored") == 2


def test_corrupt_and_foreign_snapshots_are_refused(restored_guest: Machine, sercon_spec: object) -> None:
    key = restored_guest.info()["snapshot"]["key"]  # the cache may also hold snapshots for older images
    source = folder_for("logged-in", key)
    corrupt = folder_for("corrupt-test", key)
    shutil.rmtree(corrupt, ignore_errors=True)
    shutil.copytree(source, corrupt)
    try:
        state = corrupt / "state.bin"
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
        with pytest.raises(SnapshotError, match="corrupt: its state file does not match its digest"):
            Machine(sercon_spec, name="corrupt-1", from_snapshot="corrupt-test").start()  # type: ignore[arg-type]
        meta = json.loads((corrupt / "meta.json").read_text())
        meta["key"] = "0000000000000000"
        (corrupt / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(SnapshotError, match="stale"):
            Machine(sercon_spec, name="corrupt-2", from_snapshot="corrupt-test").start()  # type: ignore[arg-type]
        with pytest.raises(SnapshotError, match="no snapshot named 'never-made'"):
            Machine(sercon_spec, name="corrupt-3", from_snapshot="never-made").start()  # type: ignore[arg-type]
    finally:
        shutil.rmtree(corrupt, ignore_errors=True)


def test_snapshot_of_a_running_guest_and_cli_start(guest: Machine, shell: LinuxShell) -> None:
    shell.run("echo from-the-shared-guest > /tmp/snap-marker")
    meta = guest.snapshot("cli-test", nonce=shell.nonce)
    assert meta["size"] > 1_000_000 and meta["guest"] == guest.name
    assert shell.run("echo still-running").output == "still-running\n"  # saving did not stop it
    twin = Machine(guest.spec, name="twin", from_snapshot="cli-test").start()  # type: ignore[arg-type]
    try:
        twin_shell = LinuxShell.resume(Console.for_machine(twin, from_offset=None), shell.nonce)
        assert twin_shell.run("cat /tmp/snap-marker").output == "from-the-shared-guest\n"
        twin_shell.console.close()
    finally:
        twin.stop()
