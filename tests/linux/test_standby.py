"""Standby owners (emulator/standby.py): a new guest from a snapshot takes a QEMU that the fork
server's standby loaded from it before the guest was asked for."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from emulator import Machine, forkserver, paths
from emulator.machine import owner_env
from emulator.spec import GuestSpec
from harness.console import Console
from harness.linux import LinuxShell

pytestmark = pytest.mark.guest


def loaded_standby(snapshot: str, timeout: float = 120.0) -> tuple[Path, int]:
    """The standby's folder and the pid of the QEMU it loaded from `snapshot`, once loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (paths.home() / "standby").glob("*/standby.log"):
            found = re.search(rf"spare QEMU (\d+) loaded from snapshot {re.escape(snapshot)}\b", log.read_text())
            if found:
                return log.parent, int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no standby loaded snapshot {snapshot} within {timeout:.0f}s")


def power_on(machine: Machine) -> dict[str, object]:
    return [e for e in machine.events() if e["event"] == "power_on"][-1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def logged_in(spec: GuestSpec, name: str) -> tuple[Machine, LinuxShell]:
    """A booted guest at a shell, to take snapshots of."""
    machine = Machine(spec, name=name).start()
    shell = LinuxShell(Console.for_machine(machine))
    shell.login(spec.user or "root", spec.password)
    return machine, shell


@pytest.fixture()
def local_only(sercon_spec: GuestSpec) -> None:
    if sercon_spec.host:
        pytest.skip("standby owners hold a local QEMU; a libvirt host restores its own way")


def test_a_new_guest_from_a_snapshot_takes_the_standby_qemu(local_only: None, sercon_home: Path,
                                                           sercon_spec: GuestSpec,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The second new guest from one snapshot gets the QEMU the standby loaded after the first: its
    own folder, logs and console, the snapshot's state, and the standby's files gone once it stops.
    A snapshot saved again under the same name is not served from the old files. Broken on purpose
    once: with `take_standby` not called, the guest cold-started (no `spare` in its power_on) and
    this test failed."""
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    monkeypatch.delenv("SERCON_RESTORE_SPARE", raising=False)
    key = forkserver.server_key(owner_env())
    source, shell = logged_in(sercon_spec, "standby-source")
    try:
        shell.run("echo first > /tmp/generation")
        source.snapshot("standby-test", nonce=shell.nonce)
        deadline = time.monotonic() + 30
        while not forkserver.socket_path(key).exists():  # the plain first start spawned it
            assert time.monotonic() < deadline, "no fork server"
            time.sleep(0.05)

        first = Machine(sercon_spec, name="standby-first", from_snapshot="standby-test").start()
        first.stop()
        folder, qemu_pid = loaded_standby("standby-test")
        second = Machine(sercon_spec, name="standby-second", from_snapshot="standby-test").start()
        try:
            event = power_on(second)
            assert event["spare"] is True and event["qemu_pid"] == qemu_pid == second.info()["qemu_pid"]
            assert second.info()["event_loop"] == "uvloop"  # a standby's loop, as any owner's
            restored = LinuxShell.resume(Console.for_machine(second, from_offset=None), shell.nonce)
            assert restored.run("cat /tmp/generation").output == "first\n"
            assert restored.run("echo taken").output == "taken\n"
            restored.console.close()
            assert second.folder is not None
            owner = json.loads((second.folder / "owner.json").read_text())
            assert owner["pid"] == int(folder.name)  # the standby became this guest's owner
            assert "spare for restore standby-test" in (second.folder / "qemu.log").read_text()
        finally:
            second.stop()
        assert not alive(qemu_pid)
        assert not folder.exists()  # the standby's files went with its QEMU

        # Saved again under the same name: the standby of the first save must not serve it.
        loaded_standby("standby-test")
        shell.run("echo second > /tmp/generation")
        source.snapshot("standby-test", nonce=shell.nonce)
        third = Machine(sercon_spec, name="standby-third", from_snapshot="standby-test").start()
        try:
            assert not power_on(third).get("spare")
            restored = LinuxShell.resume(Console.for_machine(third, from_offset=None), shell.nonce)
            assert restored.run("cat /tmp/generation").output == "second\n"
            restored.console.close()
        finally:
            third.stop()
    finally:
        source.stop()


def test_two_snapshots_in_turn_each_find_their_standby(local_only: None, sercon_home: Path,
                                                      sercon_spec: GuestSpec,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite that goes back and forth between two snapshots finds each one loaded: the fork
    server keeps a standby per recent snapshot, and each serves only its own. Broken on purpose
    once: with one standby per fork server (SERCON_STANDBYS defaulting to 1), the guest from
    `standby-a` after one from `standby-b` was not a standby's."""
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    monkeypatch.setenv("SERCON_STANDBY_TEST", "pool")  # a fork server of this test's own
    monkeypatch.delenv("SERCON_RESTORE_SPARE", raising=False)
    monkeypatch.delenv("SERCON_STANDBYS", raising=False)
    names = ("standby-a", "standby-b")
    source, shell = logged_in(sercon_spec, "standby-pool")
    try:
        for name in names:
            shell.run(f"echo {name} > /tmp/which")
            source.snapshot(name, nonce=shell.nonce)
    finally:
        source.stop()
    for name in names:  # each leaves a standby for its snapshot behind
        Machine(sercon_spec, name=f"{name}-1", from_snapshot=name).start().stop()
    loaded = {name: loaded_standby(name) for name in names}
    for name in names:
        machine = Machine(sercon_spec, name=f"{name}-2", from_snapshot=name).start()
        try:
            event = power_on(machine)
            assert event["spare"] is True and event["qemu_pid"] == loaded[name][1], name
            restored = LinuxShell.resume(Console.for_machine(machine, from_offset=None), shell.nonce)
            assert restored.run("cat /tmp/which").output == f"{name}\n"
            restored.console.close()
        finally:
            machine.stop()


def test_a_standby_ends_with_its_fork_server(local_only: None, sercon_home: Path, sercon_spec: GuestSpec,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No standby (and no paused QEMU) outlives the fork server that made it, and none is made
    with SERCON_RESTORE_SPARE=0 or SERCON_STANDBYS=0."""
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    monkeypatch.setenv("SERCON_STANDBY_TEST", "ends")  # a fork server of this test's own
    monkeypatch.delenv("SERCON_RESTORE_SPARE", raising=False)
    key = forkserver.server_key(owner_env())
    source, shell = logged_in(sercon_spec, "standby-ends")
    try:
        source.snapshot("standby-ends", nonce=shell.nonce)
    finally:
        source.stop()
    Machine(sercon_spec, name="standby-ends-1", from_snapshot="standby-ends").start().stop()
    folder, qemu_pid = loaded_standby("standby-ends")
    standby_pid = int(folder.name)
    forkserver.socket_path(key).unlink()  # as when its SERCON_HOME is deleted
    deadline = time.monotonic() + 4 * forkserver.CHECK_S + 30
    while alive(standby_pid) or alive(qemu_pid) or folder.exists():
        assert time.monotonic() < deadline, "the standby outlived its fork server"
        time.sleep(0.2)

    before = set((paths.home() / "standby").iterdir())
    for setting, value in (("SERCON_RESTORE_SPARE", "0"), ("SERCON_STANDBYS", "0")):
        with monkeypatch.context() as env:
            env.setenv(setting, value)
            for index in range(3):  # the first spawns the fork server of this setting, the others are forked
                Machine(sercon_spec, name=f"standby-off-{index}", from_snapshot="standby-ends").start().stop()
        time.sleep(1)  # a standby makes its folder within milliseconds of its request
        assert set((paths.home() / "standby").iterdir()) == before, setting
