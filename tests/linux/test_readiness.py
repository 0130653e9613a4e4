"""`sercon check` on real images: the ready ones pass, and deliberately broken variants are caught.

The broken variants are built here from the same recipes with `build_image(name, overrides=...)`
(each cached under its own hash, so only the first run pays ~10 s per variant):

- `quiet` on the kernel command line (given with `--kernel/--initrd/--append`, like a user would),
  on debian-systemd and on the busybox initramfs.

The other broken images (no getty, getty masked, sysrq=16, GRUB without serial) are variants in
images/variants.toml, checked by tests/images/test_check_variants.py.

Each check boots its own guest (the check is the whole boot), one after another.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulator.images import build_image
from harness.readiness import check_main

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def test_ready_image_passes_through_the_cli(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(["debian-systemd", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True
    assert statuses.pop("grub-serial") == "skip"  # booted with -kernel
    assert statuses.pop("grub-efi") == "skip"  # not a UEFI boot
    assert set(statuses.values()) == {"pass"}, statuses
    assert all(c["title"] and c["detail"] for c in report["checks"])


def test_ready_grub_disk_passes_through_disk_option(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = build_image("debian-grub").spec.disk
    assert disk
    assert check_main(["--disk", disk, "--user", "root", "--password", "sercon"]) == 0
    table = capsys.readouterr().out
    assert "PASS  grub-serial    GRUB menu and countdown seen on ttyS0" in table
    assert "0 failed" in table


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


def test_busybox_initramfs_given_on_the_command_line(sercon_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The guest of issue 13: a busybox getty on ttyS0, checked with --kernel/--initrd/--append. With
    `console=ttyS0` its getty passes; with `console=ttyS0 quiet` (or loglevel=1) only the quiet
    row fails (the console row is not blamed); with tty0 after ttyS0 only the console row does.
    Each within the live boot's own end, not a fixed wait."""
    spec = build_image("linux-initramfs").spec
    assert spec.kernel and spec.initrd
    base = ["--kernel", spec.kernel, "--initrd", spec.initrd, "--user", "root", "--password", "sercon", "--json"]
    cases = (("console=ttyS0", []), ("console=ttyS0 quiet", ["quiet"]), ("console=ttyS0 loglevel=1", ["quiet"]),
             ("console=ttyS0,115200 console=tty0", ["console"]))
    for append, failed in cases:
        check_main([*base, "--append", append])
        report = json.loads(capsys.readouterr().out)
        statuses = {c["id"]: c["status"] for c in report["checks"]}
        with capsys.disabled():
            print(f"\n--append {append!r}: verdict in {report['seconds']:.1f} s")
        assert statuses["getty"] == "pass" and statuses["password-user"] == "pass"
        assert statuses["console"] == ("fail" if "console" in failed else "pass")
        # nmi-panic and panic-reboot fail on this guest whatever the command line (it sets neither).
        assert [c for c, s in statuses.items() if s == "fail" and c not in ("nmi-panic", "panic-reboot")] == failed
