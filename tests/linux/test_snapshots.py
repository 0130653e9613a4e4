"""Snapshots: a fresh logged-in guest per test in a fraction of a second, isolated from the last.

The `restored_*` fixtures load a snapshot taken once at a logged-in shell (see
emulator/snapshots.py for why a migration stream and not qcow2 internal snapshots).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emulator import Machine
from emulator.errors import SnapshotError
from emulator.snapshots import folder_for
from harness.console import Console
from harness.linux import GuestPanicked, LinuxShell
from harness.pytest_plugin import login

pytestmark = pytest.mark.guest


def local_ram_only(machine: Machine) -> None:
    if machine.info()["backend"] != "local":
        pytest.skip("RAM files and streams are the local backend's; a libvirt host keeps its own save file")


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


def test_a_restored_guest_starts_from_the_snapshot_not_from_another_guest(
    restored_guest: Machine, restored_shell: LinuxShell, sercon_spec: object, request: pytest.FixtureRequest,
) -> None:
    """Self-contained: guest A writes a file (and sees it); guest B, restored from the same snapshot
    while A still runs, does not have it. Restoring B from A's state instead would fail this."""
    assert restored_shell.run("echo dirty > /tmp/left-behind; cat /tmp/left-behind").output == "dirty\n"
    meta = restored_guest.info()["snapshot"]
    other = Machine(sercon_spec, name=f"{restored_guest.name}-b", from_snapshot=meta["name"]).start()  # type: ignore[arg-type]
    try:
        shell = LinuxShell.resume(Console.for_machine(other, from_offset=None), meta["extra"]["nonce"])
        assert shell.run("ls /tmp/left-behind").exit_status != 0
        assert shell.run("echo fine").output == "fine\n"
        shell.console.close()
    finally:
        other.stop()
    assert restored_shell.run("cat /tmp/left-behind").output == "dirty\n"  # A is untouched by B


def test_restore_into_a_running_guest_keeps_the_console(restored_guest: Machine, restored_shell: LinuxShell) -> None:
    restored_shell.run("cd /proc; export X=changed")
    before = restored_guest.read_log(0)
    restored_guest.restore("logged-in")
    # The same console connection, and the shell is back as it was in the snapshot.
    again = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    assert again.run("echo ${X:-unset}").output == "unset\n"
    after = restored_guest.read_log(0)
    assert after[:len(before)] == before and len(after) > len(before)  # kept, and the log goes on
    assert [e["event"] for e in restored_guest.events()].count("restored") == 2


def _spare_when_ready(machine: Machine, timeout: float = 120.0) -> dict[str, object]:
    """The paused QEMU the owner loads after a restore in place, once it has loaded."""
    deadline = time.monotonic() + timeout
    while True:
        spare = machine.info()["restore_spare"]
        if spare and spare["ready"]:
            return spare  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no spare QEMU loaded within {timeout:.0f}s: {spare}")
        time.sleep(0.05)


def _last_power_on(machine: Machine) -> dict[str, object]:
    return [e for e in machine.events() if e["event"] == "power_on"][-1]


def test_a_second_restore_swaps_in_the_loaded_spare(restored_guest: Machine, restored_shell: LinuxShell) -> None:
    """After a restore in place the owner loads a spare QEMU (paused) from the same snapshot; the
    next restore of it makes that QEMU the guest's: the same console, the snapshot's state, and no
    spare left once the guest stops. A snapshot saved again under the same name is new files, so the
    spare loaded from the old ones is not used. Broken on purpose once: with `_take_spare` ignoring
    the snapshot's identity, the guest came back without /tmp/generation and this test failed."""
    local_ram_only(restored_guest)
    restored_guest.restore("logged-in")  # the first restore in place: a new QEMU, and a spare after it
    assert not _last_power_on(restored_guest).get("spare")
    shell = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    spare = _spare_when_ready(restored_guest)
    shell.run("export X=changed; echo dirty > /tmp/left-behind")
    restored_guest.restore("logged-in")
    event = _last_power_on(restored_guest)
    assert event["spare"] is True and event["qemu_pid"] == spare["qemu_pid"] == restored_guest.info()["qemu_pid"]
    shell = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    assert shell.run("echo ${X:-unset}; ls /tmp/left-behind").output.startswith("unset\n")
    assert shell.run("ls /tmp/left-behind").exit_status != 0

    # Saved again under one name: the spare of the first save is set aside, the second save loads.
    restored_guest.snapshot("spare-test", nonce=shell.nonce)
    restored_guest.restore("spare-test")
    shell = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    _spare_when_ready(restored_guest)
    shell.run("echo second > /tmp/generation")
    restored_guest.snapshot("spare-test", nonce=shell.nonce)
    shell.run("rm /tmp/generation")
    restored_guest.restore("spare-test")
    shell = LinuxShell.resume(restored_shell.console, restored_shell.nonce)
    assert shell.run("cat /tmp/generation").output == "second\n"
    assert not _last_power_on(restored_guest).get("spare")

    pids = [spare["qemu_pid"], _spare_when_ready(restored_guest)["qemu_pid"], restored_guest.info()["qemu_pid"]]
    restored_guest.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


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


def test_a_corrupt_ram_file_is_refused(restored_guest: Machine, sercon_spec: object) -> None:
    """One flipped byte of guest RAM is caught, though restores skip the RAM digest while the file is
    unchanged (its size, time and inode are remembered in ram.ok)."""
    local_ram_only(restored_guest)
    key = restored_guest.info()["snapshot"]["key"]
    corrupt = folder_for("corrupt-ram", key)
    shutil.rmtree(corrupt, ignore_errors=True)
    shutil.copytree(folder_for("logged-in", key), corrupt)
    try:
        with (corrupt / "ram.bin").open("r+b") as ram:
            ram.seek(1 << 20)
            byte = ram.read(1)
            ram.seek(1 << 20)
            ram.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(SnapshotError, match="corrupt: its RAM file does not match its digest"):
            Machine(sercon_spec, name="corrupt-ram-1", from_snapshot="corrupt-ram").start()  # type: ignore[arg-type]
        (corrupt / "ram.bin").write_bytes(b"short")
        with pytest.raises(SnapshotError, match="RAM file is missing or truncated"):
            Machine(sercon_spec, name="corrupt-ram-2", from_snapshot="corrupt-ram").start()  # type: ignore[arg-type]
    finally:
        shutil.rmtree(corrupt, ignore_errors=True)


def test_a_snapshot_of_a_restored_guest_streams_its_ram(restored_guest: Machine, restored_shell: LinuxShell,
                                                        sercon_spec: object) -> None:
    """A restored guest maps its RAM private, which QEMU cannot leave out of the stream: its own
    snapshot carries the RAM inside state.bin, and loads like any other."""
    local_ram_only(restored_guest)
    restored_shell.run("echo second-generation > /tmp/generation")
    meta = restored_guest.snapshot("second-generation", nonce=restored_shell.nonce)
    assert meta["ram"] == "stream" and meta["size"] > 1_000_000
    child = Machine(sercon_spec, name=f"{restored_guest.name}-child",  # type: ignore[arg-type]
                    from_snapshot="second-generation").start()
    try:
        shell = LinuxShell.resume(Console.for_machine(child, from_offset=None), restored_shell.nonce)
        assert shell.run("cat /tmp/generation").output == "second-generation\n"
        shell.console.close()
    finally:
        child.stop()


def test_snapshot_of_a_running_guest_and_cli_start(guest: Machine, shell: LinuxShell) -> None:
    shell.run("echo from-the-shared-guest > /tmp/snap-marker")
    meta = guest.snapshot("cli-test", nonce=shell.nonce)
    if guest.info()["backend"] == "libvirt":  # libvirt's save file, on the host that made it
        assert meta["ram"] == "host" and meta["host_size"] > 1_000_000 and meta["host"] == guest.spec.host  # type: ignore[union-attr]
    else:  # a booted guest's RAM is copied, not streamed: the stream holds the device state alone
        assert meta["ram"] == "file" and meta["ram_size"] == guest.spec.memory_mb << 20  # type: ignore[union-attr]
        assert meta["size"] < meta["ram_size"] // 16
    assert meta["guest"] == guest.name
    assert shell.run("echo still-running").output == "still-running\n"  # saving did not stop it
    twin = Machine(guest.spec, name="twin", from_snapshot="cli-test").start()  # type: ignore[arg-type]
    try:
        twin_shell = LinuxShell.resume(Console.for_machine(twin, from_offset=None), shell.nonce)
        assert twin_shell.run("cat /tmp/snap-marker").output == "from-the-shared-guest\n"
        twin_shell.console.close()
    finally:
        twin.stop()


def test_snapshots_prune_and_rm(make_guest: Callable[..., Machine], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Real snapshots in a cache of the test's own: a rebuilt image leaves the older snapshot of the
    same name behind (another key), which prune removes with the leftovers of an unfinished save;
    rm removes every version of a name; an unknown name is one line."""
    from emulator import paths
    from emulator.cli import main as cli

    accel = paths.cache() / "accel.json"
    monkeypatch.setenv("SERCON_CACHE", str(tmp_path))
    if accel.exists():
        shutil.copy(accel, tmp_path / "accel.json")
    for append in ("sercon.prune=old", "sercon.prune=new"):  # another command line: another key
        machine = make_guest(append_extra=append)
        shell = login(machine)
        machine.snapshot("prune-test", nonce=shell.nonce)
        shell.console.close()
        machine.stop()
    (tmp_path / "snapshots" / ".prune-test-0.123.saving").mkdir()
    old, new = sorted((tmp_path / "snapshots").glob("prune-test-*"),
                      key=lambda p: json.loads((p / "meta.json").read_text())["created"])
    assert cli(["snapshots", "prune"]) == 0
    said = capsys.readouterr().out
    assert f"removed {old.name}" in said and "superseded" in said and "unfinished save" in said
    assert not old.exists() and new.exists() and not (tmp_path / "snapshots" / ".prune-test-0.123.saving").exists()
    assert cli(["snapshot", "rm", "prune-test"]) == 0
    assert not new.exists()
    assert cli(["snapshots", "rm", "prune-test"]) == 2
    assert "no snapshot named 'prune-test'" in capsys.readouterr().err
