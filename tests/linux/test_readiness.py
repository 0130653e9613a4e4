"""`sercon check` on real images: the ready ones pass, and deliberately broken variants are caught.

The broken variants are built here from the same recipes with `build_image(name, overrides=...)`
(each cached under its own hash, so only the first run pays ~10 s per variant):

- no getty on ttyS0 (`serial-getty@ttyS0` masked, so not even systemd's generator starts one);
- `quiet` on the kernel command line (given with `--kernel/--initrd/--append`, like a user would);
- `kernel.sysrq=16` (systemd's upstream default: sync only);
- GRUB on the screen only (no `serial`/`terminal_output serial` in grub.cfg).

Each check boots its own guest (the check is the whole boot), one after another.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator.images import build_image
from harness.readiness import Report, check_image, check_main

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def _statuses(report: Report) -> dict[str, str]:
    return {c.id: c.status for c in report.checks}


def test_ready_image_passes_through_the_cli(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["debian-systemd", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True
    assert statuses.pop("grub-serial") == "skip"  # booted with -kernel
    assert set(statuses.values()) == {"pass"}, statuses
    assert all(c["title"] and c["detail"] for c in report["checks"])


def test_ready_grub_disk_passes_through_disk_option(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = build_image("debian-grub").spec.disk
    assert disk
    assert check_main(["--disk", disk, "--user", "root", "--password", "sercon"]) == 0
    table = capsys.readouterr().out
    assert "PASS  grub-serial    GRUB menu and countdown seen on ttyS0" in table
    assert "0 failed" in table


def test_missing_getty_is_caught(sercon_home: Path) -> None:
    spec = build_image("debian-systemd", overrides={"settings": {"getty": "masked"}}).spec
    report = check_image(spec, "root", "sercon", label="no-getty")
    getty = report.get("getty")
    assert getty.status == "fail"
    assert "no login prompt on ttyS0" in getty.detail
    assert "serial-getty@ttyS0" in getty.fix
    assert not report.ok
    # What needs no login is still judged: the kernel console, and SysRq over the line.
    assert _statuses(report)["console"] == "pass"
    assert _statuses(report)["sysrq-serial"] == "pass"


def test_quiet_on_the_command_line_is_caught(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = build_image("debian-systemd").spec
    assert spec.kernel and spec.initrd and spec.disk
    status = check_main(["--kernel", spec.kernel, "--initrd", spec.initrd, "--disk", spec.disk,
                         "--append", "root=/dev/vda rw quiet console=ttyS0,115200n8", "--user", "root",
                         "--password", "sercon", "--json"])
    report = json.loads(capsys.readouterr().out)
    quiet = next(c for c in report["checks"] if c["id"] == "quiet")
    assert status == 1 and report["ok"] is False
    assert quiet["status"] == "fail"
    assert "quiet on the kernel command line" in quiet["detail"]
    assert "GRUB_CMDLINE_LINUX_DEFAULT" in quiet["fix"]
    assert [c["id"] for c in report["checks"] if c["status"] == "fail"] == ["quiet"]


def test_sysrq_16_is_caught_as_systemd_default(sercon_home: Path) -> None:
    spec = build_image("debian-systemd", overrides={"settings": {"sysctl": {"kernel.sysrq": 16}}}).spec
    report = check_image(spec, "root", "sercon", label="sysrq-16")
    mask = report.get("sysrq-mask")
    assert mask.status == "fail"
    assert "kernel.sysrq=16, systemd's default: only sync is allowed" in mask.detail
    assert "This sysrq operation is disabled" in mask.detail  # the live probe was refused
    assert "kernel.sysrq = 1" in mask.fix
    assert report.get("sysrq-serial").status == "pass"  # the line works; the mask refuses
    assert [c.id for c in report.checks if c.status == "fail"] == ["sysrq-mask"]


def test_grub_without_serial_is_caught(sercon_home: Path) -> None:
    spec = build_image("debian-grub", overrides={"settings": {"grub_serial": False}}).spec
    report = check_image(spec, "root", "sercon", label="grub-no-serial")
    grub = report.get("grub-serial")
    assert grub.status == "fail"
    assert "no GRUB menu on ttyS0" in grub.detail
    assert 'GRUB_TERMINAL="serial console"' in grub.fix
    assert [c.id for c in report.checks if c.status == "fail"] == ["grub-serial"]
