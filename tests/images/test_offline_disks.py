"""The offline phase of `sercon check` on disks as users bring them, built here in a second without
root or mounts: GPT with a separate /boot, MBR, each of qcow2, vmdk, vhd (vpc) and vhdx, an LVM
partition it cannot look into; and the one-line errors for bad input.

Seen failing: with `Ext4Source` reading offset 0 instead of the partition's, every row is skip and
the description says "no readable root filesystem"; with qemu-img's format ignored (the file read
as raw), the qcow2/vmdk/vhd/vhdx cases find no partition table.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.readiness import check_main

GRUB_CFG = """set timeout=5
menuentry 'Linux' {
    linux /vmlinuz-6.1.0 root=/dev/sda2 ro quiet console=ttyS0,115200n8
}
"""


def _tree(root: Path, files: dict[str, str], links: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)


def _disk(tmp: Path, label: str, boot_separate: bool) -> Path:
    """A 64 MiB disk: /boot (16 MiB) and / (40 MiB) as ext4 partitions, or / alone."""
    rootfs, bootfs = tmp / "root", tmp / "boot"
    _tree(rootfs, {
        "etc/os-release": "ID=debian\n",
        "etc/sysctl.d/10-sysrq.conf": "kernel.sysrq = 16\n",
        "etc/shadow": "root:$6$x$y:19000:0:99999:7:::\n",
        "etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n',
    }, {
        "sbin/init": "/lib/systemd/systemd",
        "etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",  # masked
    })
    boot_files = {"grub/grub.cfg": GRUB_CFG, "vmlinuz-6.1.0": "not really a kernel"}
    if boot_separate:
        _tree(bootfs, boot_files, {})
    else:
        _tree(rootfs, {f"boot/{k}": v for k, v in boot_files.items()}, {})
    disk = tmp / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(64 << 20)
    layout = "label: gpt\n,16M\n,40M\n" if boot_separate else "label: dos\n,40M,83\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=layout, text=True, check=True, capture_output=True)
    parts = [(bootfs, 1 << 20, "16M"), (rootfs, 17 << 20, "40M")] if boot_separate else [(rootfs, 1 << 20, "40M")]
    for tree, offset, size in parts:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-E", f"offset={offset}", str(disk), size],
                       check=True, capture_output=True)
    return disk


def _offline(capsys: pytest.CaptureFixture[str], disk: Path) -> tuple[int, str]:
    status = check_main(["--disk", str(disk), "--offline"])
    return status, capsys.readouterr().out


def _rows(table: str) -> dict[str, str]:
    rows = {}
    for line in table.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASS", "FAIL", "WARN", "skip"):
            rows[words[1]] = words[0]
    return rows


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vpc", "vhdx"])
def test_gpt_with_separate_boot_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    disk = _disk(tmp_path, "gpt", boot_separate=True)
    if fmt != "raw":
        converted = tmp_path / f"disk.{fmt}"
        subprocess.run(["qemu-img", "convert", "-O", fmt, str(disk), str(converted)], check=True)
        disk = converted
    status, table = _offline(capsys, disk)
    assert status == 1
    assert f"read offline: {fmt} disk, GPT" in table
    assert "separate /boot" in table
    rows = _rows(table)
    assert rows["getty"] == "FAIL" and "serial-getty@ttyS0.service is masked" in table
    assert rows["quiet"] == "FAIL" and "from the first entry of /boot/grub/grub.cfg" in table
    assert rows["grub-serial"] == "FAIL" and "/boot/grub/grub.cfg has no serial terminal" in table
    assert rows["sysrq-mask"] == "FAIL" and "kernel.sysrq=16" in table and "10-sysrq.conf" in table
    assert rows["console"] == "PASS"


def test_mbr_single_partition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, table = _offline(capsys, _disk(tmp_path, "dos", boot_separate=False))
    assert status == 1
    assert "raw disk, MBR: ext on partition 1" in table
    assert _rows(table)["getty"] == "FAIL"


@pytest.mark.parametrize(("magic_at", "magic", "said"), [
    (512, b"LABELONE", "partition 1 is an LVM physical volume"),  # pvcreate's label, in the second sector
    (0, b"LUKS\xba\xbe", "partition 1 is encrypted (LUKS)"),
])
def test_lvm_or_luks_partition_is_named_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 magic_at: int, magic: bytes, said: str) -> None:
    disk = tmp_path / "pv.img"
    with disk.open("wb") as fh:
        fh.truncate(8 << 20)
        fh.seek((1 << 20) + magic_at)
        fh.write(magic)
    subprocess.run(["sfdisk", "-q", str(disk)], input="label: dos\n,4M,8e\n", text=True, check=True,
                   capture_output=True)
    status, table = _offline(capsys, disk)
    assert said in table and "checked live" in table
    assert "no readable root filesystem found offline" in table
    assert status in (0, 1)


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "missing": (["--disk", str(tmp_path / "nope.qcow2")], "no such file"),
        "text": (["--disk", str(tmp_path / "notes.txt")], "not a disk image sercon can use"),
        "broken-qcow2": (["--disk", str(tmp_path / "broken.qcow2")], "cannot read disk image"),
        "not-a-kernel": (["--kernel", str(tmp_path / "notes.txt")], "not a Linux kernel"),
    }
    (tmp_path / "notes.txt").write_text("just some text\n" * 100)
    (tmp_path / "broken.qcow2").write_bytes(b"QFI\xfb" + b"\x00\x00\x00\x03" + b"\xff" * 200)
    for name, (argv, expected) in cases.items():
        assert check_main([*argv, "--offline"]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (name, err)


@pytest.mark.parametrize("compressor", [None, ["gzip", "-c"], ["xz", "-c", "--check=crc32"], ["zstd", "-c", "-q"]])
def test_initrd_in_each_compression_with_early_microcode(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         compressor: list[str] | None) -> None:
    """An initrd as distributions ship it: an uncompressed early archive (CPU microcode) and then
    the compressed main one, whose /etc/inittab runs the getty on ttyS1 only."""
    import io

    from emulator.builders.cpio import CpioWriter

    def archive(files: dict[str, bytes], links: dict[str, str]) -> bytes:
        blob = io.BytesIO()
        cpio = CpioWriter(blob)
        for name, data in files.items():
            cpio.file(name, data)
        for name, target in links.items():
            cpio.symlink(name, target)
        cpio.close()
        return blob.getvalue()

    early = archive({"kernel/x86/microcode/GenuineIntel.bin": b"\0" * 64}, {})
    main = archive({"etc/inittab": b"::sysinit:/etc/init.d/rcS\nttyS1::respawn:/sbin/getty -L 115200 ttyS1 vt100\n"},
                   {"init": "/bin/busybox"})
    if compressor:
        main = subprocess.run(compressor, input=main, capture_output=True, check=True).stdout
        initrd_bytes = early + main
    else:
        initrd_bytes = main
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(initrd_bytes)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 600)
    status = check_main(["--kernel", str(kernel), "--initrd", str(initrd), "--append", "console=ttyS0", "--offline"])
    table = capsys.readouterr().out
    assert status == 1
    assert "getty on ttyS1 but not on ttyS0" in table
    assert _rows(table)["getty"] == "FAIL"
