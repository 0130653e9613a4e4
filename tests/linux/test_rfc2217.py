"""COM1 as an RFC 2217 port: pyserial clients reach the guest as real hardware, BREAK included,
and the harness drives a console through a pyserial URL exactly as it would a physical board."""

from __future__ import annotations

import pytest
import serial

from emulator import Machine
from harness.console import Console
from harness.linux import LinuxShell

pytestmark = pytest.mark.guest


def test_harness_over_rfc2217_logs_in_and_sysrq_via_break(fresh_guest: Machine) -> None:
    port = fresh_guest.info()["rfc2217_port"]
    console = Console.for_url(f"rfc2217://127.0.0.1:{port}")
    try:
        shell = LinuxShell(console)
        shell.login("root", "sercon", timeout=60)
        assert shell.run("echo over-rfc2217").output == "over-rfc2217\n"
        # A BREAK from the network client becomes a BREAK on the 16550: BREAK + h is SysRq help.
        console.send_break()
        console.send("h")
        console.expect("sysrq: HELP", timeout=30)
        assert shell.run("echo after-sysrq").output == "after-sysrq\n"
    finally:
        console.close()
    assert any(e["event"] == "break" and e.get("source") == "rfc2217" for e in fresh_guest.events())


def test_rfc2217_line_settings_are_accepted(fresh_guest: Machine) -> None:
    port = fresh_guest.info()["rfc2217_port"]
    link = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=9600, timeout=5)
    try:
        link.baudrate = 115200
        link.parity = serial.PARITY_NONE
        link.write(b"\r")
        assert b"login: " in link.read_until(b"login: ")
    finally:
        link.close()
