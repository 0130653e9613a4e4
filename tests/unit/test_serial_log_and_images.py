"""Serial log offsets, the event index, the cpio writer and kernel helpers."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest

from emulator.builders.cpio import CpioWriter
from emulator.builders.kernel import has_pvh_note
from emulator.errors import UnknownImage
from emulator.images import _insert_before_console, list_recipes, load_recipe
from emulator.serial_log import EventLog, SerialLog, read_log, tail_lines


def test_log_offsets_like_gcp(tmp_path: Path) -> None:
    log = SerialLog(tmp_path / "serial.log")
    log.append(b"0123456789")
    log.append(b"abc")
    assert log.size == 13
    assert read_log(log.path).data == b"0123456789abc"
    assert read_log(log.path, 10).data == b"abc"
    assert read_log(log.path, -3).data == b"abc"
    assert read_log(log.path, -100).data == b"0123456789abc"
    chunk = read_log(log.path, 2, 3)
    assert (chunk.start, chunk.data, chunk.size) == (2, b"234", 13)
    assert read_log(log.path, 99).data == b""
    assert read_log(tmp_path / "missing.log").data == b""


def test_log_appends_across_owners(tmp_path: Path) -> None:
    first = SerialLog(tmp_path / "serial.log")
    first.append(b"boot1\n")
    first.close()
    second = SerialLog(tmp_path / "serial.log")
    assert second.size == 6
    second.append(b"boot2\n")
    assert read_log(second.path).data == b"boot1\nboot2\n"


def test_tail_lines_cleans_carriage_returns(tmp_path: Path) -> None:
    log = SerialLog(tmp_path / "serial.log")
    log.append(b"".join(b"line %d\r\n" % i for i in range(30)) + b"login: \x1b[6n")
    assert tail_lines(log.path, 3) == "line 28\nline 29\nlogin: "


def test_event_log_records_offsets(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl")
    events.write("boot", 42, reason="reset")
    events.write("nmi", 50)
    read = EventLog.read(events.path)
    assert [(e["event"], e["offset"]) for e in read] == [("boot", 42), ("nmi", 50)]
    assert read[0]["reason"] == "reset"


def test_cpio_is_readable_by_cpio(tmp_path: Path) -> None:
    blob = io.BytesIO()
    writer = CpioWriter(blob)
    writer.directory("etc")
    writer.file("etc/hostname", b"sercon\n", 0o644)
    writer.symlink("bin/sh", "/bin/busybox")
    writer.char_device("dev/console", 5, 1)
    writer.close()
    listing = subprocess.run(["cpio", "-itv"], input=blob.getvalue(), capture_output=True, check=False)
    if listing.returncode != 0 and b"not found" in listing.stderr:
        pytest.skip("cpio(1) not installed")
    text = listing.stdout.decode()
    assert "etc/hostname" in text and "bin/sh -> /bin/busybox" in text and "dev/console" in text


def _elf_with_notes(*notes: tuple[bytes, int]) -> bytes:
    """A minimal ELF64 (little-endian) whose one PT_NOTE segment holds `notes` (name, type)."""
    body = b""
    for name, ntype in notes:
        name_z = name + b"\0"
        desc = struct.pack("<I", 0x1000000)  # the PVH entry point's address, as the kernel puts it
        body += struct.pack("<III", len(name_z), len(desc), ntype)
        body += name_z.ljust((len(name_z) + 3) // 4 * 4, b"\0") + desc
    phoff, phentsize = 64, 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # ELFCLASS64, little-endian, version 1
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 64, 0, 0)
    note_offset = phoff + phentsize
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(body), len(body), 4)  # PT_NOTE
    return header + phdr + body


def test_pvh_note_detection() -> None:
    """Found where it is (after another note), and only the Xen PHYS32_ENTRY note (type 18) counts."""
    assert has_pvh_note(_elf_with_notes((b"Xen", 18)))
    assert has_pvh_note(_elf_with_notes((b"GNU", 3), (b"Xen", 5), (b"Xen", 18)))
    assert not has_pvh_note(_elf_with_notes((b"Xen", 5)))
    assert not has_pvh_note(_elf_with_notes((b"GNU", 18)))
    assert not has_pvh_note(b"not an elf")
    assert not has_pvh_note(_elf_with_notes((b"Xen", 18))[:4] + bytes([1]) + bytes(59))  # a 32-bit ELF


def test_the_default_images_vmlinux_has_the_pvh_note() -> None:
    """The real kernel the default image boots through its PVH entry (skipped until it is built)."""
    from emulator import paths

    found = sorted((paths.cache() / "images").glob("linux-initramfs-*/vmlinux"))
    if not found:
        pytest.skip("linux-initramfs is not built yet (make images)")
    assert has_pvh_note(found[-1].read_bytes())


def test_console_stays_last_when_arguments_are_added() -> None:
    assert _insert_before_console("panic=0 console=tty0 console=ttyS0", "quiet x=1") == (
        "panic=0 quiet x=1 console=tty0 console=ttyS0"
    )


def test_unknown_recipe_lists_the_known_ones() -> None:
    assert "linux-initramfs" in list_recipes()
    with pytest.raises(UnknownImage, match=r"known recipes are .*linux-initramfs"):
        load_recipe("no-such-recipe")
    with pytest.raises(UnknownImage):
        load_recipe("../etc")
