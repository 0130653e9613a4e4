"""`emulator.windows.windows_spec`: the QEMU command line of a Windows guest (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator import firmware
from emulator.errors import SerconError
from emulator.qemu_args import qemu_args
from emulator.windows import disk_format_for, windows_spec


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "win.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(508))
    return path


def test_bios_profile(image: Path) -> None:
    spec = windows_spec(image)
    spec.validate()
    args = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4)
    assert f"file={image},if=ide,format=qcow2" in args  # on q35: the AHCI controller
    assert "-snapshot" in args  # the user's image is never written
    assert "q35,accel=tcg,memory-backend=pc.ram" in args and "4096" in args and "pvpanic" in args
    assert not any("pflash" in a for a in args)


def test_uefi_profile_is_the_firmware_modules(image: Path, tmp_path: Path) -> None:
    """UEFI as every sercon guest has it: CODE read-only, each power-on its own copy of the variables
    (made from `vars_dir`'s file, created once from the template), Secure Boot with SMM."""
    try:
        code, template = firmware.find_ovmf()
    except SerconError:
        pytest.skip("OVMF is not installed here (apt-get install ovmf)")
    spec = windows_spec(image, firmware="uefi", ovmf="host", vars_dir=tmp_path / "vars")
    spec.validate()
    kept = tmp_path / "vars" / "OVMF_VARS.fd"
    assert (spec.firmware, spec.firmware_vars) == (str(code), str(kept))
    assert kept.read_bytes() == template.read_bytes()
    args = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4, firmware_vars=str(tmp_path / "copy.fd"))
    pflash = [a for a in args if "pflash" in a]
    assert pflash == [f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                      f"if=pflash,format=raw,unit=1,file={tmp_path / 'copy.fd'}"]
    secure = windows_spec(image, firmware="uefi", ovmf="host", secure_boot=True)
    assert secure.secure_boot and secure.firmware and "secboot" in secure.firmware
    assert "smm=on" in " ".join(qemu_args(secure, accel="tcg", serial_fd=3, qmp_fd=4))


def test_missing_ovmf_says_what_to_install(image: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(firmware, "OVMF_DIR", tmp_path / "no-ovmf")
    with pytest.raises(SerconError, match=r"apt-get install ovmf.*WINDOWS_FIRMWARE=bios"):
        windows_spec(image, firmware="uefi", ovmf="host")


def test_errors_and_formats(image: Path) -> None:
    with pytest.raises(SerconError, match="WINDOWS_IMAGE"):
        windows_spec(image.parent / "missing.vhdx")
    with pytest.raises(SerconError, match="too little for Windows"):
        windows_spec(image, memory_mb=1024)
    assert [disk_format_for(n) for n in ("a.qcow2", "b.VHD", "c.vhdx", "d.img", "e.iso")] == [
        "qcow2", "vpc", "vhdx", "raw", None]
