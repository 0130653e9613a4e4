"""The owners' fork server (emulator/forkserver.py): warm owners that behave as plain ones, one
server per settings, and no service to anyone but its own uid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator import Machine, forkserver, paths
from emulator.machine import owner_env
from emulator.spec import GuestSpec
from harness.console import Console
from harness.linux import LinuxShell

pytestmark = pytest.mark.guest


def wait_for_server(key: str, timeout: float = 30) -> Path:
    path = forkserver.socket_path(key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return path
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError(f"no fork server at {path}")


def test_a_warm_owner_is_forked_and_behaves_as_a_plain_one(sercon_home: Path, sercon_spec: GuestSpec,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The second start is forked by the server the first one started; it boots, takes actions and
    stops like any owner. Seen to fail with the server's child keeping SIGCHLD ignored (the kernel
    then reaps QEMU itself, and its exit reads as "exit status 255" instead of "signal 9")."""
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    key = forkserver.server_key(owner_env())
    first = Machine(sercon_spec, name="fork-first").start()
    try:
        wait_for_server(key)
        second = Machine(sercon_spec, name="fork-second").start()
        try:
            owner_pid = int(json.loads((second.folder / "owner.json").read_text())["pid"])  # type: ignore[operator]
            parent = int(Path(f"/proc/{owner_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert "emulator.forkserver" in Path(f"/proc/{parent}/cmdline").read_text()  # forked, not spawned
            assert first.info()["event_loop"] == second.info()["event_loop"] == "uvloop"  # spawned and forked
            second.wait_for_event(lambda e: e["event"] == "power_on", timeout=30, since=0)
            os.kill(second.info()["qemu_pid"], signal.SIGKILL)  # its exit status is the owner's to read
            assert second.wait_for_event("qemu_exited", timeout=30, since=0)["how"] == "signal 9"
            second.power_cycle()
            assert [e["event"] for e in second.events()].count("power_on") == 2
            assert (second.folder / "owner.log").stat().st_mode & 0o077 == 0  # type: ignore[operator]
        finally:
            second.stop()
    finally:
        first.stop()


def test_other_settings_get_another_server_and_off_means_plain(sercon_home: Path) -> None:
    env = dict(os.environ)
    assert forkserver.server_key(env) != forkserver.server_key(env | {"SERCON_ACCEL": "kvm"})
    assert forkserver.server_key(env) == forkserver.server_key(env | {"UNRELATED": "x"})
    assert not forkserver.enabled() if os.environ.get("SERCON_FORKSERVER") == "0" else forkserver.enabled()


def test_an_owner_runs_asyncios_loop_when_told_to(sercon_home: Path, sercon_spec: GuestSpec,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SERCON_UVLOOP=0 is the way back to asyncio's own loop (to compare, or to rule uvloop out);
    such an owner boots and serves its console as any other. Seen to fail with the setting ignored."""
    monkeypatch.setenv("SERCON_UVLOOP", "0")
    with Machine(sercon_spec, name="plain-loop") as machine:
        assert machine.info()["event_loop"] == "asyncio"
        shell = LinuxShell(Console.for_machine(machine))
        shell.login(sercon_spec.user or "root", sercon_spec.password)
        assert shell.run("echo $((6 * 7))").output.strip() == "42"


def test_another_uid_gets_nothing_from_the_server(sercon_home: Path, sercon_spec: GuestSpec,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`nobody`, even with the folder and the socket opened to it, gets no owner: the server checks
    the peer's uid. Seen to fail with that check removed (nobody got a PID line back)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as nobody")
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    key = forkserver.server_key(owner_env())
    Machine(sercon_spec, name="fork-uid").start().stop()
    path = wait_for_server(key)
    opened = [paths.home(), path.parent]
    modes = [folder.stat().st_mode & 0o777 for folder in opened]
    for folder in opened:
        os.chmod(folder, 0o711)
    os.chmod(path, 0o666)
    try:
        request = json.dumps({"argv": ["--help"], "env": {}, "cwd": "/", "log": "/tmp/sercon-fork-uid.log"})
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);s.settimeout(10)\n"
                "try:\n s.sendall(sys.argv[2].encode()+b'\\n');print(repr(s.recv(100)))\n"
                "except (ConnectionResetError, BrokenPipeError):\n print(repr(b''))\n")
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                                 "-c", code, str(path), request], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "b''"  # closed without an answer
    finally:
        for folder, mode in zip(opened, modes, strict=True):
            os.chmod(folder, mode)
        os.chmod(path, 0o600)


def test_a_server_whose_home_is_deleted_exits(sercon_home: Path, sercon_spec: GuestSpec,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A test suite makes and deletes many SERCON_HOMEs: each one's server (about 40 MB) must not
    stay for its 10 idle minutes. Seen to fail with the socket check removed."""
    monkeypatch.setenv("SERCON_FORKSERVER", "1")
    key = forkserver.server_key(owner_env())
    Machine(sercon_spec, name="fork-gone").start().stop()
    path = wait_for_server(key)

    def serving() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if str(path).encode() in argv:
                found.append(int(pid))
        return found

    assert serving()  # the server (and an owner it forked, if that one is still ending)
    path.unlink()
    deadline = time.monotonic() + 4 * forkserver.CHECK_S + 30
    while serving():
        assert time.monotonic() < deadline, "the fork server outlived its socket"
        time.sleep(0.2)
