"""UEFI guests on the command line: the two flash chips, the per-guest VARS copy, Secure Boot's
SMM, and the one-line errors for missing OVMF and Secure Boot on a machine without SMM."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator import firmware
from emulator.errors import SerconError
from emulator.qemu_args import qemu_args
from emulator.spec import GuestSpec


@pytest.fixture
def fake_ovmf(tmp_path: Path) -> tuple[str, str, str]:
    code, variables, disk = tmp_path / "OVMF_CODE_4M.fd", tmp_path / "OVMF_VARS_4M.fd", tmp_path / "disk.img"
    for f in (code, variables, disk):
        f.write_bytes(b"\0" * 4096)
    return str(code), str(variables), str(disk)


def _pflash(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-drive" and "pflash" in args[i + 1]]


def test_uefi_guest_has_readonly_code_and_its_own_vars(fake_ovmf: tuple[str, str, str]) -> None:
    code, variables, disk = fake_ovmf
    spec = GuestSpec(disk=disk, machine="q35", firmware=code, firmware_vars=variables)
    spec.validate()
    args = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4, firmware_vars="/guest/efivars.fd")
    assert _pflash(args) == [f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                             "if=pflash,format=raw,unit=1,file=/guest/efivars.fd"]
    assert "smm=on" not in " ".join(args) and "cfi.pflash01" not in " ".join(args)


def test_secure_boot_adds_smm_and_a_secure_flash(fake_ovmf: tuple[str, str, str]) -> None:
    code, variables, disk = fake_ovmf
    spec = GuestSpec(disk=disk, machine="q35", firmware=code, firmware_vars=variables, secure_boot=True)
    args = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4, firmware_vars="/guest/efivars.fd")
    assert args[args.index("-machine") + 1] == "q35,smm=on,accel=tcg,memory-backend=pc.ram"
    assert "driver=cfi.pflash01,property=secure,value=on" in args


def test_bios_guest_has_no_flash(fake_ovmf: tuple[str, str, str]) -> None:
    args = qemu_args(GuestSpec(disk=fake_ovmf[2]), accel="tcg", serial_fd=3, qmp_fd=4)
    assert _pflash(args) == [] and "smm=on" not in " ".join(args)


def test_secure_boot_on_a_machine_without_smm_is_one_clear_line(fake_ovmf: tuple[str, str, str]) -> None:
    code, variables, disk = fake_ovmf
    with pytest.raises(SerconError, match=r"Secure Boot needs the q35 machine .* not 'pc'") as info:
        GuestSpec(disk=disk, machine="pc", firmware=code, firmware_vars=variables, secure_boot=True).validate()
    assert "\n" not in str(info.value)


def test_missing_ovmf_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 512)
    with pytest.raises(SerconError, match=r"OVMF_CODE_4M.fd not found: install it with `apt-get install ovmf`"):
        GuestSpec(disk=str(disk), machine="q35", firmware="/usr/share/OVMF-gone/OVMF_CODE_4M.fd").validate()
    monkeypatch.setattr(firmware, "OVMF_DIR", tmp_path / "nothing")
    with pytest.raises(SerconError, match=r"apt-get install ovmf"):
        firmware.find_ovmf(secure_boot=True)


def test_vars_copy_is_fresh_and_prefers_a_snapshots_copy(tmp_path: Path) -> None:
    template, saved = tmp_path / "VARS.fd", tmp_path / "saved.fd"
    template.write_bytes(b"template")
    saved.write_bytes(b"saved")
    guest = tmp_path / "guest"
    guest.mkdir()
    copy = firmware.vars_copy(str(template), guest)
    copy.write_bytes(b"the guest wrote here")
    assert template.read_bytes() == b"template"  # the packaged file is never written
    assert firmware.vars_copy(str(template), guest).read_bytes() == b"template"  # each power-on starts afresh
    assert firmware.vars_copy(str(template), guest, saved).read_bytes() == b"saved"


def test_snapshot_key_covers_the_firmware_and_leaves_bios_keys_alone(fake_ovmf: tuple[str, str, str],
                                                                     tmp_path: Path) -> None:
    from emulator import snapshots

    code, variables, disk = fake_ovmf
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n")
    qemu.chmod(0o755)
    bios = GuestSpec(disk=disk, machine="q35")
    uefi = bios.replace(firmware=code, firmware_vars=variables)
    keys = {snapshots.snapshot_key(s, "tcg", snapshots.qemu_version(str(qemu)))
            for s in (bios, uefi, uefi.replace(secure_boot=True), uefi.replace(firmware_vars=code))}
    assert len(keys) == 4  # a state saved under one firmware is never loaded under another
