"""Kernel file helpers: unpacking the ELF `vmlinux` from a bzImage, and checking its PVH entry.

Under TCG the compressed bzImage spends ~2.4 s decompressing itself; QEMU can instead load the
ELF `vmlinux` directly through its PVH entry note, which boots to `login:` in about half the time
(see shared/reference section 3). We unpack it once, at image build time.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from ..errors import ImageBuildError

XEN_ELFNOTE_PHYS32_ENTRY = 18


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Find the compressed payload in a bzImage and return the ELF vmlinux it contains."""
    for magic, decompress in (
        (b"\xfd7zXZ\x00", _xz),
        (b"\x1f\x8b\x08", _gzip),
    ):
        start = bzimage.find(magic)
        while start != -1:
            try:
                elf = decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error, EOFError):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            start = bzimage.find(magic, start + 1)
    raise ImageBuildError("could not find an xz or gzip compressed vmlinux inside the kernel image")


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def has_pvh_note(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF carries the Xen PHYS32_ENTRY note QEMU needs for PVH."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def install_kernel(vmlinuz: Path, out: Path, boot: str, recipe: str, log: Callable[[str], None]) -> str:
    """Put the image's kernel into `out` the way the recipe boots it; returns the file name.

    `boot = "pvh"`: the unpacked ELF vmlinux (fast under TCG); `"bzimage"`: the stock file.
    """
    if boot == "pvh":
        log("unpacking vmlinux from the bzImage (for the fast PVH entry)")
        write_vmlinux(vmlinuz, out / "vmlinux")
        return "vmlinux"
    if boot == "bzimage":
        shutil.copyfile(vmlinuz, out / "bzImage")
        return "bzImage"
    raise ImageBuildError(f'recipe {recipe}: boot must be "pvh" or "bzimage", not {boot!r}')


def write_vmlinux(bzimage_path: Path, out: Path) -> None:
    elf = extract_vmlinux(bzimage_path.read_bytes())
    if not has_pvh_note(elf):
        raise ImageBuildError(
            f"{bzimage_path.name} has no PVH entry note (CONFIG_PVH); set boot = \"bzimage\" in the recipe"
        )
    out.write_bytes(elf)
