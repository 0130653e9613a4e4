"""`sercon` end to end against a real guest: up, ls, attach (with the Ctrl+] menu), sysrq, nmi,
reset, log, events, screenshot, qmp, down, and the one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.guest

SERCON = [sys.executable, "-m", "emulator.cli"]


def sercon(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SERCON, *args], capture_output=True, text=True, env=env, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"sercon {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cli_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("cli-home")
    previous = os.environ.get("SERCON_HOME")
    os.environ["SERCON_HOME"] = str(home)
    up = sercon("up", "linux-initramfs", "--name", "clivm")
    # No unauthenticated RFC 2217 port unless `--rfc2217` asks for one.
    assert "guest clivm is running" in up.stdout and "rfc2217://" not in up.stdout
    yield "clivm"
    sercon("down", "clivm", check=False)
    if previous is None:
        os.environ.pop("SERCON_HOME")
    else:
        os.environ["SERCON_HOME"] = previous


def test_ls_lists_the_guest(cli_guest: str) -> None:
    out = sercon("ls").stdout
    assert "clivm" in out and "running" in out


def test_attach_types_and_uses_the_escape_menu(cli_guest: str) -> None:
    child = pexpect.spawn(SERCON[0], [*SERCON[1:], "attach", cli_guest], timeout=60, encoding="utf-8")
    try:
        child.expect("attached to clivm")
        child.send("\r")
        child.expect("login: ")
        child.send("root\r")
        child.expect("Password: ")
        child.send("sercon\r")
        child.expect("# ")
        child.send("echo $((40+2))\r")
        child.expect("42")
        child.send("\x1d?")
        child.expect("escape menu")
        child.send("\x1ds")
        child.expect("SysRq key or sequence")
        child.send("h\r")
        child.expect("sysrq: HELP")
        child.send("\x1dx")
        child.expect("unknown menu key")
        child.send("\x1dq")
        child.expect("detached")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_sysrq_nmi_reset_log_events(cli_guest: str, tmp_path: Path) -> None:
    assert "sent SysRq h" in sercon("sysrq", cli_guest, "h").stdout
    assert "nmi: done" in sercon("nmi", cli_guest).stdout
    log = sercon("log", cli_guest, "--start", "-20000").stdout
    assert "sysrq: HELP" in log and "NMI received for unknown reason" in log
    assert "reset: done" in sercon("reset", cli_guest).stdout
    events = sercon("events", cli_guest).stdout
    # The event name is the fifth column ("HH:MM:SS boot N @OFFSET EVENT ..."); every line says "boot",
    # so a substring test could not fail. Checked by breaking it: without owner.reset's record, "reset" is missing.
    names = {line.split()[4] for line in events.splitlines() if len(line.split()) > 4}
    assert {"power_on", "sysrq", "nmi", "reset", "boot"} <= names, names
    shot = tmp_path / "screen.png"
    sercon("screenshot", cli_guest, str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG"
    assert '"status": "running"' in sercon("qmp", cli_guest, "query-status").stdout


def test_snapshot_and_up_from_snapshot(cli_guest: str) -> None:
    saved = sercon("snapshot", cli_guest, "cli-snap").stdout
    assert "saved snapshot cli-snap" in saved
    assert "cli-snap" in sercon("snapshots").stdout
    up = sercon("up", "--name", "fromsnap", "--from-snapshot", "cli-snap")
    try:
        assert "guest fromsnap is running" in up.stdout
        events = sercon("events", "fromsnap").stdout
        assert "restored" in events and "cli-snap" in events
        assert "restored from snapshot cli-snap" in sercon("restore", "fromsnap", "cli-snap").stdout
    finally:
        sercon("down", "fromsnap", check=False)
    missing = sercon("up", "--name", "nosnap", "--from-snapshot", "no-such-snap", check=False)
    assert missing.returncode == 2 and "no snapshot named 'no-such-snap'" in missing.stderr


def test_errors_are_one_clear_line(cli_guest: str) -> None:
    bad_key = sercon("sysrq", cli_guest, "q!", check=False)
    assert bad_key.returncode == 2
    assert bad_key.stderr.startswith("sercon: error: invalid SysRq key '!'") and "valid keys are" in bad_key.stderr
    unknown = sercon("nmi", "no-such-guest", check=False)
    assert unknown.returncode == 2 and "no running guest named 'no-such-guest'" in unknown.stderr
    image = sercon("up", "no-such-image", check=False)
    assert image.returncode == 2 and "unknown image 'no-such-image'" in image.stderr
    assert "linux-initramfs" in image.stderr
    env = {**os.environ, "PATH": "/nonexistent", "SERCON_QEMU": ""}
    env.pop("SERCON_QEMU")
    missing = sercon("up", "linux-initramfs", "--name", "noqemu", env=env, check=False)
    assert missing.returncode == 2 and "apt-get install qemu-system-x86" in missing.stderr


def test_down_stops_the_guest_and_keeps_its_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("cli-down")
    env = {**os.environ, "SERCON_HOME": str(home)}
    sercon("up", "--name", "shortlived", env=env)
    log = home / "guests" / "shortlived" / "serial.log"
    deadline = time.monotonic() + 60
    while b"Linux version" not in log.read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = sercon("down", "shortlived", env=env).stdout
    assert "shortlived stopped" in out
    assert "no running guests" in sercon("ls", env=env).stdout
    assert b"Linux version" in log.read_bytes()
    again = sercon("down", "shortlived", env=env, check=False)
    assert again.returncode == 2 and "no running guest" in again.stderr
