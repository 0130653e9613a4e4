"""`emulator.windows.windows_spec`: the QEMU command line of a Windows guest (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator import windows
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


def test_uefi_profile_uses_a_private_vars_copy(image: Path, tmp_path: Path) -> None:
    if not any(Path(code).is_file() for code, _ in windows.OVMF_PAIRS):
        pytest.skip("OVMF is not installed here (apt-get install ovmf)")
    spec = windows_spec(image, firmware="uefi", vars_dir=tmp_path / "vars")
    pflash = [a for a in spec.extra_args if "pflash" in a]
    assert len(pflash) == 2 and "readonly=on" in pflash[0]
    assert f"file={tmp_path / 'vars' / 'OVMF_VARS.fd'}" in pflash[1]
    assert (tmp_path / "vars" / "OVMF_VARS.fd").is_file()


def test_missing_ovmf_says_what_to_install(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(windows, "OVMF_PAIRS", (("/nonexistent/CODE.fd", "/nonexistent/VARS.fd"),))
    with pytest.raises(SerconError, match="apt-get install ovmf"):
        windows_spec(image, firmware="uefi")


def test_errors_and_formats(image: Path) -> None:
    with pytest.raises(SerconError, match="WINDOWS_IMAGE"):
        windows_spec(image.parent / "missing.vhdx")
    with pytest.raises(SerconError, match="too little for Windows"):
        windows_spec(image, memory_mb=1024)
    assert [disk_format_for(n) for n in ("a.qcow2", "b.VHD", "c.vhdx", "d.img", "e.iso")] == [
        "qcow2", "vpc", "vhdx", "raw", None]
