"""The Windows console suite on a REAL Windows image: SAC over EMS on COM1, through sercon.

Runs only when `WINDOWS_IMAGE` names a disk image (qcow2, raw, vhd, vhdx) prepared as
images/windows/README.md says (EMS on COM1 at 115200, boot manager on EMS, NMICrashDump=1, a
password user). Also: `WINDOWS_USER` (default Administrator), `WINDOWS_PASSWORD` (required),
`WINDOWS_DOMAIN` (default: none, the local machine), `WINDOWS_FIRMWARE=bios|uefi` (default bios),
`WINDOWS_MEMORY_MB` (default 4096), `WINDOWS_BOOT_TIMEOUT` seconds (default 1800: Windows under
TCG takes many minutes to boot). The image is booted from a throw-away overlay: never modified.

    make test-windows WINDOWS_IMAGE=/images/win2019.qcow2 WINDOWS_PASSWORD=...
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import Machine
from emulator.windows import windows_spec
from harness.console import Console
from harness.sac import CmdChannel, SacConsole, SacError

IMAGE = os.environ.get("WINDOWS_IMAGE", "")
SKIP_REASON = (
    "real Windows SKIPPED: WINDOWS_IMAGE is not set. Only the SAC simulator suite ran (it is not Windows). "
    "To run this suite, prepare an image as images/windows/README.md says (images/windows/prepare-image.sh "
    "applies the EMS/SAC settings offline, or use images/windows/autounattend-ems.xml for a fresh install), then: "
    "make test-windows WINDOWS_IMAGE=/path/win.qcow2 WINDOWS_USER=Administrator WINDOWS_PASSWORD=... "
    "[WINDOWS_FIRMWARE=uefi]"
)

if not IMAGE:
    pytest.skip(SKIP_REASON, allow_module_level=True)

pytestmark = [pytest.mark.guest, pytest.mark.slow]

USER = os.environ.get("WINDOWS_USER", "Administrator")
PASSWORD = os.environ.get("WINDOWS_PASSWORD", "")
DOMAIN = os.environ.get("WINDOWS_DOMAIN", "")
FIRMWARE = os.environ.get("WINDOWS_FIRMWARE", "bios")
MEMORY_MB = int(os.environ.get("WINDOWS_MEMORY_MB", "4096"))
BOOT_TIMEOUT = float(os.environ.get("WINDOWS_BOOT_TIMEOUT", "1800"))


@pytest.fixture(scope="module")
def machine(sercon_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    if not PASSWORD:
        pytest.fail("WINDOWS_PASSWORD is not set: the suite logs in to a Command Prompt channel with it")
    if FIRMWARE not in ("bios", "uefi"):
        pytest.fail(f"WINDOWS_FIRMWARE must be bios or uefi, not {FIRMWARE!r}")
    spec = windows_spec(IMAGE, firmware="uefi" if FIRMWARE == "uefi" else "bios", memory_mb=MEMORY_MB,
                        vars_dir=tmp_path_factory.mktemp("ovmf"), user=USER, password=PASSWORD)
    image_before = Path(IMAGE).stat().st_mtime_ns
    m = Machine(spec, name="windows-real").start()
    yield m
    m.stop()
    assert Path(IMAGE).stat().st_mtime_ns == image_before, "the user's image was modified"


@pytest.fixture(scope="module")
def sac(machine: Machine) -> Iterator[SacConsole]:
    console = Console.for_machine(machine, from_offset=0)
    driver = SacConsole(console, timeout=120)
    driver.wait_for_banner(timeout=BOOT_TIMEOUT)
    yield driver
    console.close()


@pytest.fixture(scope="module")
def cmd(sac: SacConsole) -> CmdChannel:
    sac.wait_for_cmd_available(timeout=BOOT_TIMEOUT)
    return sac.open_cmd(USER, PASSWORD, DOMAIN, timeout=300)


def test_sac_banner_and_identification(sac: SacConsole) -> None:
    ids = sac.identification()
    assert ids.get("Computer Name")
    assert "Windows" in ids.get("Product", ""), f"not a Windows SAC? id said {ids}"


def test_help_and_unknown_command(sac: SacConsole) -> None:
    assert re.search(r"^cmd\s", sac.help(), re.M)
    with pytest.raises(SacError, match="Unrecognized command"):
        sac.command("frobnicate")


def test_channel_list_has_sac(sac: SacConsole) -> None:
    rows = sac.channels()
    assert rows and rows[0].index == 0 and rows[0].name == "SAC"


def test_cmd_channel_login_and_output(sac: SacConsole, cmd: CmdChannel) -> None:
    assert "Microsoft Windows" in cmd.run("ver").output
    hostname = cmd.run("hostname").output.strip()
    assert hostname.upper() == sac.identification()["Computer Name"].upper()


def test_exit_status(cmd: CmdChannel) -> None:
    assert cmd.run("cmd /c exit 3", page=False, status=True).exit_status == 3


def test_long_output_is_paged(cmd: CmdChannel) -> None:
    lines = cmd.run("systeminfo", timeout=300).output.splitlines()
    assert len(lines) > 24
    assert any(line.startswith("Host Name:") for line in lines)


def test_esc_tab_switching(sac: SacConsole, cmd: CmdChannel) -> None:
    cmd.leave()
    assert sac.identification().get("Computer Name")
    info = sac.switch_to(cmd.index)
    assert info.name == cmd.name
    sac.view()
    assert cmd.run("echo back again").output.endswith("back again")
    cmd.leave()


def test_nmi_is_bugcheck_0x80(sac: SacConsole, machine: Machine) -> None:
    machine.nmi()
    bugcheck = sac.wait_for_bugcheck(timeout=600)
    assert bugcheck.code == 0x80, f"expected NMI_HARDWARE_FAILURE (is NMICrashDump=1 set?), got {bugcheck}"
    sac.wait_for_banner(timeout=BOOT_TIMEOUT)  # AutoReboot (the default) brings Windows back


def test_reset_during_boot_shows_the_boot_manager(sac: SacConsole, machine: Machine) -> None:
    machine.reset()
    sac.wait_for_boot_manager(timeout=600)
    sac.press_f8()
    sac.expect(r"Advanced Boot Options|Advanced options", timeout=120, what="Advanced Boot Options after Esc 8")
    sac.send("\r")  # the highlighted entry: start Windows normally
    sac.wait_for_banner(timeout=BOOT_TIMEOUT)


def test_graceful_restart(sac: SacConsole, machine: Machine) -> None:
    boot = machine.boot
    machine.restart(timeout=900)
    sac.wait_for_banner(timeout=BOOT_TIMEOUT)
    assert machine.boot > boot


def test_sac_restart_command(sac: SacConsole, machine: Machine) -> None:
    boot = machine.boot
    sac.restart()
    sac.wait_for_banner(timeout=BOOT_TIMEOUT)
    assert machine.boot > boot


def test_power_cycle(sac: SacConsole, machine: Machine) -> None:
    machine.power_cycle()
    sac.wait_for_banner(timeout=BOOT_TIMEOUT)


def test_serial_log_keeps_every_boot(machine: Machine) -> None:
    log = machine.read_log()
    assert log.count(b"Computer is booting, SAC started and initialized.") >= 5
