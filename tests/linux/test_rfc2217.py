"""COM1 as an RFC 2217 port, only when asked for: pyserial clients reach the guest as real hardware,
BREAK included; every connection and line setting is recorded with the peer's address."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial

from emulator import Machine
from emulator.spec import GuestSpec
from harness.console import Console
from harness.linux import LinuxShell

pytestmark = pytest.mark.guest


@pytest.fixture
def rfc_guest(sercon_home: Any, sercon_spec: GuestSpec) -> Iterator[Machine]:
    machine = Machine(sercon_spec, name=f"rfc2217-{time.monotonic_ns() % 100000}", rfc2217=True).start()
    yield machine
    machine.stop()


def wait_events(machine: Machine, test: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in machine.events() if test(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_no_rfc2217_port_unless_asked(fresh_guest: Machine) -> None:
    """Fails if the owner opens an RFC 2217 port by default (as it did: any local user got a root shell)."""
    assert fresh_guest.info()["rfc2217_port"] is None
    assert not any(e["event"].startswith("rfc2217") for e in fresh_guest.events())


def test_harness_over_rfc2217_logs_in_and_sysrq_via_break(rfc_guest: Machine) -> None:
    port = rfc_guest.info()["rfc2217_port"]
    assert rfc_guest.info()["rfc2217_authenticated"] is False
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
    events = rfc_guest.events()
    assert any(e["event"] == "break" and e.get("source") == "rfc2217" for e in events)
    # Every use is recorded with the peer's address (an unauthenticated port must at least be accountable).
    connects = [e for e in events if e["event"] == "rfc2217_connect"]
    assert connects and connects[0]["peer"].startswith("127.0.0.1:") and connects[0]["authenticated"] is False
    assert wait_events(rfc_guest, lambda e: e["event"] == "rfc2217_disconnect" and e["peer"] == connects[0]["peer"])


def test_rfc2217_line_settings_arrive(rfc_guest: Machine) -> None:
    """The settings a client makes reach the port (recorded per change); fails if they never arrive.

    Checked by breaking it once: with `_PortAdapter.__setattr__` not recording, no rfc2217_line event
    shows 9600 and the assertion below fails."""
    port = rfc_guest.info()["rfc2217_port"]
    link = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=9600, timeout=5)
    try:
        assert wait_events(rfc_guest, lambda e: e["event"] == "rfc2217_line" and e["setting"] == "baudrate"
                           and e["value"] == 9600), "the client's 9600 baud never reached the port"
        link.baudrate = 115200
        link.parity = serial.PARITY_EVEN
        assert wait_events(rfc_guest, lambda e: e["event"] == "rfc2217_line" and e["setting"] == "parity"
                           and e["value"] == "E" and e["line"] == "115200 8E1")
        link.parity = serial.PARITY_NONE
        link.write(b"\r")
        assert b"login: " in link.read_until(b"login: ")
    finally:
        link.close()
