"""The QEMU command line built from a GuestSpec (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.errors import QemuNotFound, SerconError
from emulator.qemu_args import find_qemu, qemu_args
from emulator.spec import GuestSpec


def test_kernel_guest_has_com1_on_the_passed_socket_and_qmp() -> None:
    spec = GuestSpec(kernel="/k", initrd="/i", append="console=ttyS0", memory_mb=256)
    args = qemu_args(spec, accel="tcg", serial_fd=7, qmp_fd=9, name="g1")
    joined = " ".join(args)
    assert "-chardev socket,id=com1,fd=7 -serial chardev:com1" in joined
    assert "-chardev socket,id=qmp,fd=9 -mon chardev=qmp,mode=control" in joined
    assert "-machine pc,accel=tcg" in joined and "-m 256" in joined
    assert args[args.index("-kernel") + 1] == "/k" and args[args.index("-initrd") + 1] == "/i"
    assert args[args.index("-append") + 1] == "console=ttyS0"
    assert "-no-shutdown" in args and "panic=none" in args
    assert "-device" in args and "pvpanic" in args
    assert "-cpu" not in args  # TCG keeps QEMU's default model


def test_com1_on_fifos_and_commas_in_paths_are_escaped() -> None:
    """The owner's COM1 is QEMU's `pipe` chardev; a path with a comma would otherwise end the option."""
    spec = GuestSpec(disk="/images/a,b.qcow2", disk_format="qcow2")
    args = qemu_args(spec, accel="tcg", serial_pipe="/home/x,y/guests/g/com1", qmp_fd=9)
    assert args[args.index("-serial") - 1] == "pipe,id=com1,path=/home/x,,y/guests/g/com1"
    assert any(a.startswith("file=/images/a,,b.qcow2,") for a in args)
    with pytest.raises(ValueError):
        qemu_args(spec, accel="tcg", serial_pipe="/p", serial_fd=3, qmp_fd=9)
    with pytest.raises(ValueError):
        qemu_args(spec, accel="tcg", qmp_fd=9)


def test_kvm_uses_the_host_cpu_and_disk_options() -> None:
    spec = GuestSpec(disk="/d.qcow2", disk_format="qcow2", disk_interface="ide", disk_snapshot=True, pvpanic=False)
    args = qemu_args(spec, accel="kvm", serial_fd=3, qmp_fd=4)
    assert args[args.index("-cpu") + 1] == "host"
    assert "file=/d.qcow2,if=ide,format=qcow2" in args
    assert "-snapshot" in args and "pvpanic" not in args and "-kernel" not in args


def test_extra_args_come_last() -> None:
    args = qemu_args(GuestSpec(kernel="/k", extra_args=["-rtc", "base=utc"]), accel="tcg", serial_fd=3, qmp_fd=4)
    assert args[-2:] == ["-rtc", "base=utc"]


def test_spec_validation_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SerconError, match="needs a kernel"):
        GuestSpec().validate()
    with pytest.raises(SerconError, match="kernel file not found: /nope"):
        GuestSpec(kernel="/nope").validate()
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    with pytest.raises(SerconError, match="policy must be takeover or reject"):
        GuestSpec(kernel=str(kernel), policy="share").validate()  # type: ignore[arg-type]
    with pytest.raises(SerconError, match="unknown guest spec field"):
        GuestSpec.from_dict({"kernel": "k", "colour": "blue"})
    spec = GuestSpec(kernel=str(kernel), append="a b")
    assert GuestSpec.from_json(spec.to_json()) == spec


def test_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("SERCON_QEMU", raising=False)
    with pytest.raises(QemuNotFound, match="apt-get install qemu-system-x86"):
        find_qemu()
    monkeypatch.setenv("SERCON_QEMU", "/no/such/qemu")
    with pytest.raises(QemuNotFound, match="not an executable"):
        find_qemu()


def test_guest_ram_is_a_shared_memfd_or_a_snapshots_file_mapped_private() -> None:
    """Booting: RAM in a shared memfd (a snapshot copies it instead of streaming it). Restoring:
    the snapshot's RAM file, share=off, so each guest's writes stay its own."""
    spec = GuestSpec(kernel="/k", memory_mb=256)
    booting = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4)
    assert booting[booting.index("-machine") + 1] == "pc,accel=tcg,memory-backend=pc.ram"
    assert "memory-backend-memfd,id=pc.ram,size=256M,share=on" in booting
    restoring = qemu_args(spec, accel="tcg", serial_fd=3, qmp_fd=4, ram_file="/snap/ram.bin")
    assert "memory-backend-file,id=pc.ram,size=256M,mem-path=/snap/ram.bin,share=off" in restoring
    assert not any("memfd" in a for a in restoring)
