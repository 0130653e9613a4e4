"""Another local account gets nothing of a guest: no log, no spec (it holds the guest password), no
console or control socket, no TCP port. Proven with a real second user, `nobody`, via setpriv.

Each test fails on the code before these fixes: guest files followed the umask (serial.log and
spec.json 0644, folders 0755), the sockets took any peer, and an RFC 2217 port was always open.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator import Machine
from emulator.spec import GuestSpec

pytestmark = pytest.mark.guest

#: Run as `nobody` by the system Python (standard library only), so the venv need not be readable.
PROBE = r"""
import json, os, socket, sys
folder = sys.argv[1]
out = {}
for name in ("serial.log", "events.jsonl", "spec.json", "owner.json", "qemu.log", "owner.log"):
    try:
        with open(os.path.join(folder, name), "rb") as fh:
            out[name] = "read %d bytes" % len(fh.read())
    except OSError as exc:
        out[name] = type(exc).__name__
for name, hello in (("console.sock", b'{"mode": "interactive", "client": "intruder"}\n'),
                    ("control.sock", b'{"op": "qmp", "command": "query-status"}\n')):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(os.path.join(folder, name))
        try:
            s.sendall(hello)
        except BrokenPipeError:
            pass  # the owner may refuse (and hang up) before the request is sent: read its answer
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        out[name] = reply.decode(errors="replace")
    except OSError as exc:
        out[name] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def as_nobody(*args: str) -> dict[str, str]:
    nobody = pwd.getpwnam("nobody")
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
         "/usr/bin/python3", "-c", PROBE, *args],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@pytest.fixture
def open_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SERCON_HOME that other users may traverse (as ~/.local/state often is), under umask 022."""
    if os.getuid() != 0:
        pytest.skip("switching to the nobody account needs root")
    home = Path(tempfile.mkdtemp(prefix="sercon-open-"))
    home.chmod(0o755)
    monkeypatch.setenv("SERCON_HOME", str(home))
    old = os.umask(0o022)
    yield home
    os.umask(old)
    shutil.rmtree(home, ignore_errors=True)


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def tcp_listeners_of(pid: int) -> list[str]:
    listening = listening_tcp_inodes()
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listening:
            found.append(target)
    return found


def test_another_user_gets_no_file_socket_or_port(open_home: Path, sercon_spec: GuestSpec) -> None:
    machine = Machine(sercon_spec, name="trust").start()
    try:
        folder = machine.folder
        assert folder is not None
        # Private whatever the umask: the folder 0700, every file 0600 (spec.json has the password).
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
        for item in folder.iterdir():
            mode = stat.S_IMODE(item.stat().st_mode)
            assert mode & 0o077 == 0, f"{item.name} is {oct(mode)}"
        # No TCP port at all by default (the RFC 2217 port gave any local user a root shell).
        owner_pid = int(json.loads((folder / "owner.json").read_text())["pid"])
        assert tcp_listeners_of(owner_pid) == []
        # The password is in no answer that goes to a control-socket client.
        info = machine.info()
        assert sercon_spec.password and json.dumps(sercon_spec.password) not in json.dumps(info)
        assert info["spec"]["password"] is None
        # As nobody: nothing can be opened or connected.
        seen = as_nobody(str(folder))
        assert all(v == "PermissionError" for v in seen.values()), seen
    finally:
        machine.stop()


def test_sockets_refuse_other_uids_even_when_reachable(open_home: Path, sercon_spec: GuestSpec) -> None:
    """SO_PEERCRED: with the folder and sockets opened up by hand (a mistake, a shared group...),
    the owner still refuses a peer that is neither the guest's user nor root, and records it."""
    machine = Machine(sercon_spec, name="peercred").start()
    try:
        folder = machine.folder
        assert folder is not None
        folder.parent.chmod(0o755)
        folder.chmod(0o755)
        for sock in ("console.sock", "control.sock"):
            (folder / sock).chmod(0o777)
        seen = as_nobody(str(folder))
        nobody = pwd.getpwnam("nobody").pw_uid
        for sock in ("console.sock", "control.sock"):
            reply: dict[str, Any] = json.loads(seen[sock])
            assert reply["ok"] is False and f"uid {nobody}" in reply["error"]["message"], seen
        events = machine.events()
        assert any(e["event"] == "console_refused" and e.get("uid") == nobody for e in events)
        assert any(e["event"] == "control_refused" and e.get("uid") == nobody for e in events)
        assert not any(e["event"] == "qmp" for e in events)
        # The owner's own user still gets in.
        assert machine.info()["state"] == "running"
    finally:
        machine.stop()


def test_qmp_and_screenshot_are_recorded_with_who_asked(open_home: Path, sercon_spec: GuestSpec) -> None:
    machine = Machine(sercon_spec, name="qmpaudit").start()
    try:
        assert machine.qmp("query-status")["status"] in ("running", "paused")
        shot = machine.screenshot(open_home / "shot.png")
        events = machine.events()
        qmp = [e for e in events if e["event"] == "qmp"]
        assert qmp and qmp[-1]["command"] == "query-status" and qmp[-1]["uid"] == os.getuid()
        shots = [e for e in events if e["event"] == "screenshot"]
        assert shots and shots[-1]["uid"] == os.getuid() and shots[-1]["path"] == str(shot)
    finally:
        machine.stop()


def test_long_sysrq_stops_when_the_requester_hangs_up(open_home: Path, sercon_spec: GuestSpec) -> None:
    """A SysRq sequence is at most 32 keys, and stops when its request ends (the control connection
    closes), recording what it sent. Before: 64 KiB of keys kept sending BREAKs after the request."""
    machine = Machine(sercon_spec, name="sysrqcap").start()
    try:
        from emulator.errors import InvalidSysRqKey

        with pytest.raises(InvalidSysRqKey, match="at most 32 keys"):
            machine.sysrq("9" * 33)
        assert machine.folder is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(machine.folder / "control.sock"))
        sock.sendall(json.dumps({"op": "sysrq", "keys": "9" * 32, "interval": 1.0}).encode() + b"\n")
        time.sleep(1.5)
        sock.close()
        deadline = time.monotonic() + 30
        while True:
            done = [e for e in machine.events() if e["event"] == "sysrq"]
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done and done[-1].get("cancelled") is True and len(done[-1]["keys"]) < 32, done
    finally:
        machine.stop()


def test_labels_shown_to_other_users_are_scrubbed(open_home: Path, sercon_spec: GuestSpec) -> None:
    """A console client's label reaches other users' terminals (the takeover notice): control
    characters are replaced. Before: written raw, so a label could retitle or clear their terminal."""
    machine = Machine(sercon_spec, name="labels").start()
    try:
        first, _ = machine.open_console("interactive", client="first")
        evil = "\x1b]0;pwned\x07\x1b[2Jevil"
        second, _ = machine.open_console("interactive", client=evil)
        first.settimeout(30)
        seen = b""
        while b"took over the console" not in seen:
            chunk = first.recv(65536)
            assert chunk, seen
            seen += chunk
        assert b"\x1b]0;" not in seen and b"\x1b[2J" not in seen and b"?]0;pwned??[2Jevil" in seen, seen
        second.close()
        first.close()
        deadline = time.monotonic() + 10
        while not any(e["event"] == "console_attach" and e["client"] == "?]0;pwned??[2Jevil"
                      for e in machine.events()):
            assert time.monotonic() < deadline, machine.events()
            time.sleep(0.05)
    finally:
        machine.stop()
