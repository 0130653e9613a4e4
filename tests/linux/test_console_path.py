"""The console path on one shared guest: login prompt, shell, SysRq, NMI, log, screenshot, takeover.

These tests only read, run commands and send non-destructive SysRq/NMI, so one booted guest
serves them all (tests that break their guest live in test_power.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from emulator import ConsoleBusy, InvalidSysRqKey, Machine
from emulator.errors import SerconError
from harness.console import Console
from harness.linux import CommandTimeout, LinuxShell
from harness.pytest_plugin import login

pytestmark = pytest.mark.guest


def wait_in_log(machine: Machine, pattern: bytes, start: int, timeout: float = 30.0) -> bytes:
    """Log bytes from `start` once `pattern` (a regex) shows up in them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = machine.read_log(start)
        if re.search(pattern, data):
            return data
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the serial log within {timeout}s; log tail:\n{machine.log_tail()}")


def test_login_prompt_on_ttys0_with_16550(shell: LinuxShell, guest: Machine) -> None:
    log = guest.read_log(0)
    assert b"ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A" in log
    assert re.search(rb"sercon login: ", log)
    uart = shell.run("cat /proc/tty/driver/serial").output
    assert re.search(r"^0: uart:16550A port:000003F8 irq:4", uart, re.M)
    assert shell.run("cat /proc/cmdline").output.split()[-1].startswith("console=ttyS0")


def test_run_returns_output_and_exit_status(shell: LinuxShell) -> None:
    result = shell.run("echo hello; echo to-stderr >&2")
    assert result.output == "hello\nto-stderr\n"
    assert result.exit_status == 0 and result.ok
    assert shell.run("false").exit_status == 1
    assert shell.run("exit_code() { return 42; }; exit_code").exit_status == 42
    missing = shell.run("ls /no/such/file")
    assert missing.exit_status != 0 and "No such file" in missing.output


def test_output_printed_between_commands_is_not_the_next_ones(guest: Machine, shell: LinuxShell) -> None:
    """A job printing after its command returned: the line reaches the console before the next
    command is sent, and run() leaves it out of that command's output (it stays in the log).

    Broken on purpose once: with neither the log fence nor the socket drained before the command
    (`_log_fence` returning None, `discard_buffered` taking nothing), the stray line came back as
    the next command's output and this test failed."""
    start = len(guest.read_log(0))
    shell.run("sh -c '(sleep 0.3; echo sercon-stray-$((6*7))) &'")  # no job-control notice: not this shell's job
    wait_in_log(guest, rb"sercon-stray-42", start)
    time.sleep(0.2)  # and on this console's socket, not only in the log
    result = shell.run("echo mine")
    assert result.output == "mine\n"
    assert result.kernel_messages == []


def test_shell_state_kept_between_commands(shell: LinuxShell) -> None:
    shell.run("cd /proc/self && export SERCON_TEST=kept")
    assert shell.run("pwd").output.strip().startswith("/proc")
    assert shell.run("echo $SERCON_TEST").output == "kept\n"
    shell.run("cd /")


def test_multiline_and_quotes(shell: LinuxShell) -> None:
    result = shell.run("for i in 1 2 3; do\n  echo \"it's $i\"\ndone")
    assert result.output == "it's 1\nit's 2\nit's 3\n"
    assert shell.run("printf 'no newline'").output == "no newline"


def test_kernel_messages_kept_out_of_output(shell: LinuxShell) -> None:
    # The kernel writes to /dev/console (ttyS0) while the command is running.
    # printk may defer console output while the UART is busy: the sleep lets it land mid-command.
    result = shell.run("echo before; echo 'sercon-kmsg-test' > /dev/kmsg; sleep 1; echo after")
    assert result.output == "before\nafter\n"
    assert any("sercon-kmsg-test" in line for line in result.kernel_messages)
    # Old kernel lines that a command prints itself (dmesg) stay in its output.
    assert "sercon-kmsg-test" in shell.run("dmesg | tail -5").output


def test_timeout_interrupts_and_shell_recovers(shell: LinuxShell) -> None:
    with pytest.raises(CommandTimeout) as caught:
        shell.run("echo started; sleep 30", timeout=2)
    assert "started" in caught.value.partial_output
    assert shell.run("echo alive").output == "alive\n"


def test_sysrq_help(guest: Machine, shell: LinuxShell) -> None:
    start = len(guest.read_log(0))
    assert guest.sysrq("h") == ["h"]
    data = wait_in_log(guest, rb"sysrq: HELP : .*show-memory-usage\(m\)", start)
    assert b"loglevel(0-9)" in data
    assert shell.run("echo still-here").output == "still-here\n"


def test_sysrq_sequence_sends_each_key(guest: Machine, shell: LinuxShell) -> None:
    """`shell`: the kernel is up (a SysRq sent while it boots is lost, as on real hardware)."""
    start = len(guest.read_log(0))
    assert guest.sysrq("MWH") == ["m", "w", "h"]
    data = wait_in_log(guest, rb"sysrq: HELP", start)
    memory, blocked, help_ = (data.find(b"sysrq: Show Memory"), data.find(b"sysrq: Show Blocked State"),
                              data.find(b"sysrq: HELP"))
    assert -1 < memory < blocked < help_, data[-3000:]
    assert [e["keys"] for e in guest.events() if e["event"] == "sysrq"][-1] == "mwh"


def test_sysrq_invalid_key_rejected(guest: Machine, shell: LinuxShell) -> None:
    """`shell`: the kernel is up. Run first on an xdist worker with only `guest`, the BREAK went out
    before the 8250 driver was and the help text never came."""
    start = len(guest.read_log(0))
    with pytest.raises(InvalidSysRqKey) as caught:
        guest.sysrq("h!")
    message = str(caught.value)
    assert "'!'" in message and "valid keys are" in message and "reisub" in message
    with pytest.raises(InvalidSysRqKey):
        guest.sysrq("")
    # A valid press afterwards is the fence: had the 'h' of "h!" gone out before the '!' was
    # refused, its help text would be in the log before this one's (validating key by key breaks it).
    events_before = [e for e in guest.events() if e["event"] == "sysrq"]
    guest.sysrq("h")
    data = wait_in_log(guest, rb"sysrq: HELP", start)
    assert data.count(b"sysrq: HELP") == 1 and b"sysrq: " not in data[:data.index(b"sysrq: HELP")], data[-2000:]
    after = [e for e in guest.events() if e["event"] == "sysrq"]
    assert after[len(events_before):] and [e["keys"] for e in after[len(events_before):]] == ["h"]


def test_nmi_message(guest: Machine, shell: LinuxShell) -> None:
    start = len(guest.read_log(0))
    guest.nmi()
    data = wait_in_log(guest, rb"Dazed and confused, but trying to continue", start)
    assert re.search(rb"Uhhuh\. NMI received for unknown reason \w+ on CPU 0", data)
    assert shell.run("echo survived-nmi").output == "survived-nmi\n"
    assert any(e["event"] == "nmi" for e in guest.events())


def test_serial_log_offsets(guest: Machine) -> None:
    whole = guest.read_log(0)
    assert guest.read_log(-100) == whole[-100:]
    assert guest.read_log(10, 20) == whole[10:30]
    assert guest.read_log_remote(10, 20) == whole[10:30]
    assert guest.read_log(len(whole) + 1000) == b""


def test_screenshot_is_a_png(guest: Machine, tmp_path: object) -> None:
    from pathlib import Path

    target = Path(str(tmp_path)) / "screen.png"
    written = guest.screenshot(target)
    data = written.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 640 and height >= 200


def test_takeover_tells_the_first_session_and_keeps_the_guest_shell(guest: Machine, shell: LinuxShell) -> None:
    first, _ = guest.open_console("interactive", client="alice")
    second, _ = guest.open_console("interactive", client="bob")
    first.settimeout(10)
    notice = b""
    while chunk := first.recv(4096):
        notice += chunk
    assert b"The serial console connection was closed" in notice and b"bob" in notice
    assert guest.info()["interactive"] == "bob"
    second.close()
    assert shell.run("echo shell-survived").output == "shell-survived\n"
    assert any(e["event"] == "console_takeover" for e in guest.events())


def test_read_only_viewer_sees_output_but_cannot_type(guest: Machine, shell: LinuxShell) -> None:
    viewer = Console.for_machine(guest, mode="read", from_offset=None, client="viewer")
    try:
        viewer.send("echo typed-by-viewer\r")
        shell.run("echo seen-by-viewer")
        viewer.expect("seen-by-viewer", timeout=10)
        assert b"typed-by-viewer" not in guest.read_log(-4000)
    finally:
        viewer.close()


def test_reject_policy_refuses_a_second_session(make_guest: object) -> None:
    machine = make_guest(policy="reject")  # type: ignore[operator]
    first, _ = machine.open_console("interactive", client="first")
    try:
        with pytest.raises(ConsoleBusy, match="in use by first"):
            machine.open_console("interactive", client="second")
        viewer, _ = machine.open_console("read", client="viewer")  # viewers are still welcome
        viewer.close()
    finally:
        first.close()
    assert any(e["event"] == "console_rejected" for e in machine.events())


def test_a_login_prompt_under_kernel_messages_is_answered_at_once(make_guest: Callable[..., Machine]) -> None:
    """printk writes to the console whenever it likes, often just after the getty's prompt (the
    TSC calibration at 2 s landed there in 9 of 12 bench boots, and login() waited 6 s of quiet
    each time). A login prompt followed only by kernel messages makes login() press Enter at
    once. Here the quiet-Enter fallback is turned off, so only that rule can find the prompt:
    seen to fail (no prompt within the timeout) with the rule removed."""
    machine = make_guest()
    wait_in_log(machine, rb"login: ", 0, timeout=120)
    start = len(machine.read_log(0))
    machine.sysrq("h")  # the kernel's SysRq help, printed under the prompt
    wait_in_log(machine, rb"sysrq: HELP", start)
    shell = LinuxShell(Console.for_machine(machine, from_offset=0))
    shell.quiet_enter_s = 3600.0
    shell.login("root", "sercon", timeout=60)
    assert shell.run("echo ok").output == "ok\n"


def test_a_password_prompt_under_kernel_messages_gets_the_password(make_guest: Callable[..., Machine]) -> None:
    """Kernel messages printed just after "Password: " (a clocksource watchdog warning did, on a
    loaded CI host) fill the prompt's row and the rows below, and the prompt still waits. login()
    must type the password. It used to find no prompt, wait for quiet, press Enter and so send an
    empty password ('Login incorrect'): seen to fail that way with the rule removed."""
    machine = make_guest()
    wait_in_log(machine, rb"login: ", 0, timeout=120)
    seen = bytearray()
    buried: list[int] = []

    def bury(data: bytes) -> None:  # runs as the console reads, before login() sees the bytes
        seen.extend(data)
        if not buried and b"Password:" in seen:
            buried.append(len(machine.read_log(0)))
            machine.sysrq("h")
            wait_in_log(machine, rb"sysrq: HELP[^\n]*\n", buried[0])

    console = Console.for_machine(machine, from_offset=0)
    console.tail.hooks.append(bury)
    shell = LinuxShell(console)
    shell.login("root", "sercon", timeout=90)
    assert buried, "the guest never asked for a password"
    log = machine.read_log(0)
    after = log[log.rindex(b"Password:") + len(b"Password:"):]
    # what the guest printed between the prompt and the SysRq help: only kernel lines
    assert re.fullmatch(rb"(?:\s*\[\s*\d+\.\d+\] [^\n]*\n)*\s*\[\s*\d+\.\d+\] ",
                        after[:after.index(b"sysrq: HELP")])
    assert shell.run("echo ok").output == "ok\n"


def test_unknown_guest_is_a_clear_error(sercon_home: object) -> None:
    with pytest.raises(SerconError, match="no running guest named 'nope'"):
        Machine.attach("nope")


def test_a_harness_console_that_fell_behind_resumes_from_its_offset(
    make_guest: Callable[..., Machine], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The owner drops a client that stops reading while the guest prints more than it buffers
    (16 MiB; 128 KiB here). The harness console reconnects from its log offset: it gets every byte,
    in order, and the shell goes on. Without the resume, the next read raised ConsoleClosed (and
    before that a bare ConnectionResetError)."""
    monkeypatch.setenv("SERCON_CLIENT_BACKLOG", str(128 * 1024))
    machine = make_guest()
    shell = login(machine)
    start = shell.console.offset
    received = bytearray()
    shell.console.tail.hooks.append(received.extend)  # every byte the console reads, as it reads it
    shell.console.sendline("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 1200000; echo; echo END-OF-FLOOD")
    wait_in_log(machine, rb"\nEND-OF-FLOOD", start, timeout=300)  # all printed, nothing read meanwhile
    shell.console.expect(re.compile(rb"\nEND-OF-FLOOD"), timeout=60)
    assert shell.console.spawn.resumed >= 1  # type: ignore[union-attr]
    log = machine.read_log(start)
    assert len(received) > 1_200_000 and bytes(received) == log[:len(received)]  # every byte, in order
    assert shell.run("echo still-here").output == "still-here\n"
