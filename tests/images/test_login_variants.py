"""LinuxShell.login() on gettys and prompts as other people build them (images/variants.toml,
images/debian-shells): each variant boots, logs in, runs a command, and the output and exit status
come back clean.

Seen failing: with the line-regex login of before (harness/linux.py at 150bea6) the
hostname-none, user-colour-dollar and autologin variants fail; typing the setup line right after
`exec /bin/sh` (before sh's prompt) let fish read it, and the fish case timed out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.builders.variants import build_variant, variants
from emulator.images import build_image
from harness.console import Console
from harness.linux import LinuxShell, LoginFailed

pytestmark = [pytest.mark.guest, pytest.mark.slow]

LOGIN_VARIANTS = [name for name, v in variants().items() if v.ready and v.base == "linux-initramfs"]


def _check_shell(shell: LinuxShell) -> None:
    result = shell.run("echo hello; printf 'a\\tb\\n'; (exit 3)")
    assert result.output == "hello\na\tb\n", repr(result.output)
    assert result.exit_status == 3
    assert shell.run("id -u").output.strip().isdigit()
    assert shell.run("false").exit_status == 1


@pytest.mark.parametrize("name", LOGIN_VARIANTS)
def test_initramfs_variant_logs_in(sercon_home: Path, name: str) -> None:
    variant = variants()[name]
    spec = build_variant(name).spec
    user = variant.login.get("user", spec.user or "root")
    password = variant.login.get("password", spec.password)
    machine = Machine(spec, name=name[:24]).start()
    try:
        with Console.for_machine(machine) as console:
            shell = LinuxShell(console)
            shell.login(user, password)
            _check_shell(shell)
            whoami = shell.run("whoami 2>/dev/null || id -un").output.strip()
            assert whoami == user
    finally:
        machine.stop()


def test_wrong_password_is_login_failed_after_the_delay(sercon_home: Path) -> None:
    """busybox login waits 3 s before 'Login incorrect': the refusal must still be read as one."""
    spec = build_variant("hostname-dotted-banner").spec
    machine = Machine(spec, name="wrong-password").start()
    try:
        with Console.for_machine(machine) as console:
            shell = LinuxShell(console)
            shell.wait_for_login_prompt()
            console.sendline()  # a fresh prompt for login() (the first one was read above)
            started = time.monotonic()
            with pytest.raises(LoginFailed, match="wrong password or user name"):
                shell.login("root", "not-the-password")
            print(f"\nrefused after {time.monotonic() - started:.1f} s (busybox login waits 3 s)")
    finally:
        machine.stop()


def test_unrecognised_prompt_says_how_to_pass_one(sercon_home: Path) -> None:
    """A shell prompt the defaults do not know (`READY:`) fails with the console lines and the option;
    the same prompt given as `shell_prompt` logs in."""
    spec = build_image("linux-initramfs", overrides={"settings": {"profile": "PS1='READY: '\n"}}).spec
    machine = Machine(spec, name="odd-prompt").start()
    try:
        with Console.for_machine(machine) as console:
            with pytest.raises(LoginFailed) as failed:
                LinuxShell(console).login("root", "sercon", timeout=60)
            message = str(failed.value)
            assert "'READY:'" in message and "shell_prompt=" in message and "--sercon-prompt" in message
        machine.reset()
        with Console.for_machine(machine, from_offset=None) as console:
            shell = LinuxShell(console, shell_prompt=r"READY: ?$")
            shell.login("root", "sercon")
            _check_shell(shell)
    finally:
        machine.stop()


# ------------------------------------------------------------- Debian shells


@pytest.fixture(scope="module")
def shells_guest(sercon_home: Path) -> Iterator[Machine]:
    machine = Machine(build_image("debian-shells").spec, name="debian-shells").start()
    yield machine
    machine.stop()


@pytest.mark.parametrize("user", ["root", "zed", "fishy"])
def test_debian_login_shells(shells_guest: Machine, user: str) -> None:
    """bash 5 with colours and bracketed paste, zsh with a right prompt, fish; one login after another."""
    with Console.for_machine(shells_guest, from_offset=None) as console:
        shell = LinuxShell(console)
        shell.login(user, "sercon", timeout=240)
        assert shell.login_shell == ("fish" if user == "fishy" else "posix")
        _check_shell(shell)
        login_shell = shell.run("getent passwd $(id -un) | cut -d: -f7").output.strip()
        assert login_shell.endswith({"root": "bash", "zed": "zsh", "fishy": "fish"}[user])
        shell.logout()  # for fishy, the sh that replaced fish: the session ends as well


def test_debian_expired_password_says_so(shells_guest: Machine) -> None:
    with Console.for_machine(shells_guest, from_offset=None) as console:
        with pytest.raises(LoginFailed, match="password has expired"):
            LinuxShell(console).login("old", "sercon", timeout=240)
        console.send(b"\x03")  # leave the password-change dialogue


def test_debian_agetty_autologin(sercon_home: Path) -> None:
    machine = Machine(build_variant("debian-autologin").spec, name="debian-autologin").start()
    try:
        with Console.for_machine(machine) as console:
            shell = LinuxShell(console)
            shell.login("root", "sercon", timeout=240)
            _check_shell(shell)
            # agetty execs login, which runs the shell: the unit says how it was started.
            assert "--autologin root" in shell.run("systemctl cat serial-getty@ttyS0.service").output
            assert b"Password:" not in machine.read_log(0)
    finally:
        machine.stop()
