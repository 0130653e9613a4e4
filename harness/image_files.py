"""Read a guest image's files offline: no mount, no loop device, no root where the tools allow.

- An initramfs (`--initrd`, or a recipe's): its `newc` cpio archive, plain or gzip/xz/zstd/lz4
  compressed (the tools for the latter come from the host), read in Python.
- A disk (`--disk`, or a file given as IMAGE): `qemu-img info` names the format (raw, qcow2,
  vmdk, vpc/vhd, vhdx, ...); anything but raw is converted to a sparse raw copy in a temporary
  folder; `sfdisk --json` lists MBR or GPT partitions; each ext2/3/4 filesystem is read with
  e2fsprogs' `debugfs` at its byte offset (`image?offset=N`). A separate /boot is found by its
  contents and placed at /boot. LVM, LUKS, XFS and btrfs are named, not read: `DiskImage.notes`
  says what could not be looked into, and the checks confirm those live.

`open_image(spec)` returns an `ImageFiles` (or None when there is nothing to read) whose
`read(path)`, `link(path)` and `listdir(path)` work on the guest's paths.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from emulator.errors import SerconError

#: Formats `qemu-img info` reports that we hand to qemu-img convert.
DISK_FORMATS = ("raw", "qcow2", "qcow", "vmdk", "vpc", "vhdx", "vdi", "qed", "parallels")


class ImageError(SerconError):
    """The image could not be read at all (missing, unreadable, or not an image)."""


@dataclass
class ImageFiles:
    """Files of one guest, from any number of sources mounted at paths ("/" and maybe "/boot")."""

    sources: dict[str, _Source] = field(default_factory=dict)
    #: What was read and what could not be (shown in the report).
    notes: list[str] = field(default_factory=list)
    #: A short description: "initramfs (cpio, gzip)", "qcow2 disk, GPT, root ext4 on partition 2".
    description: str = ""

    def _locate(self, path: str) -> tuple[_Source, str] | None:
        best = ""
        for mount in self.sources:
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best = mount
        if not best:
            return None
        rest = path[len(best.rstrip("/")):] or "/"
        return self.sources[best], rest

    def read(self, path: str) -> str | None:
        """A file's text (following symlinks inside the image), or None if absent."""
        for _ in range(8):
            found = self._locate(path)
            if found is None:
                return None
            source, rel = found
            target = source.link(rel)
            if target is None:
                return source.read(rel)
            path = str(PurePosixPath(path).parent / target) if not target.startswith("/") else target
        return None

    def link(self, path: str) -> str | None:
        found = self._locate(path)
        return found[0].link(found[1]) if found else None

    def listdir(self, path: str) -> list[str]:
        found = self._locate(path)
        return found[0].listdir(found[1]) if found else []

    def exists(self, path: str) -> bool:
        found = self._locate(path)
        return bool(found and found[0].exists(found[1]))


class _Source:
    def read(self, path: str) -> str | None:
        raise NotImplementedError

    def link(self, path: str) -> str | None:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        return self.read(path) is not None or self.link(path) is not None or bool(self.listdir(path))


# ------------------------------------------------------------------ cpio


class CpioSource(_Source):
    def __init__(self, data: bytes) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}
        pos = 0
        while pos + 110 <= len(data):
            magic = data[pos : pos + 6]
            if magic not in (b"070701", b"070702"):
                # Concatenated archives (microcode + main) are padded with zeros between them.
                nxt = data.find(b"070701", pos)
                if nxt < 0:
                    break
                pos = nxt
                continue
            fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
            mode, size, namesize = fields[1], fields[6], fields[11]
            name_start = pos + 110
            name = data[name_start : name_start + namesize - 1].decode(errors="replace")
            body = name_start + namesize
            body += -body % 4
            content = data[body : body + size]
            pos = body + size
            pos += -pos % 4
            if name == "TRAILER!!!":
                continue
            self.entries["/" + name.lstrip("./").lstrip("/")] = (mode, content)

    def read(self, path: str) -> str | None:
        entry = self.entries.get(path)
        if entry and entry[0] & 0o170000 == 0o100000:
            return entry[1].decode(errors="replace")
        return None

    def link(self, path: str) -> str | None:
        entry = self.entries.get(path)
        if entry and entry[0] & 0o170000 == 0o120000:
            return entry[1].decode(errors="replace")
        return None

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.entries if p.startswith(prefix)})


def _decompress(data: bytes, what: str) -> tuple[bytes, str]:
    if data[:6] in (b"070701", b"070702"):
        return data, "cpio"
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data), "cpio, gzip"
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data), "cpio, xz"
    tools = {b"\x28\xb5\x2f\xfd": ("zstd", "-dc"), b"\x02\x21\x4c\x18": ("lz4", "-dc"),
             b"\x04\x22\x4d\x18": ("lz4", "-dc"), b"BZh": ("bzip2", "-dc")}
    for magic, (tool, flag) in tools.items():
        if data.startswith(magic):
            if not shutil.which(tool):
                raise ImageError(f"{what} is {tool}-compressed and {tool} is not installed (apt-get install {tool})")
            proc = subprocess.run([tool, flag], input=data, capture_output=True, check=False)
            if proc.returncode != 0:
                raise ImageError(f"{what}: {tool} could not decompress it")
            return proc.stdout, f"cpio, {tool}"
    raise ImageError(f"{what} is not an initramfs (no cpio archive, plain or compressed)")


def read_initrd(path: str) -> ImageFiles:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read initrd {path}: {exc.strerror}") from None
    data, kind = _decompress(raw, f"initrd {path}")
    source = CpioSource(data)
    # An early uncompressed archive (CPU microcode) may come first, the compressed main one after it.
    end = data.rfind(b"TRAILER!!!")
    rest = data[end + 10:].lstrip(b"\0") if end >= 0 else b""
    if len(rest) > 16 and rest[:6] not in (b"070701", b"070702"):
        more, kind = _decompress(rest, f"initrd {path}")
        source.entries.update(CpioSource(more).entries)
    files = ImageFiles(sources={"/": source}, description=f"initramfs ({kind})")
    return files


# ------------------------------------------------------------------ disks


class Ext4Source(_Source):
    """An ext2/3/4 filesystem inside an image file at a byte offset, read with debugfs."""

    def __init__(self, image: str, offset: int) -> None:
        self.device = f"{image}?offset={offset}" if offset else image
        self._cache: dict[tuple[str, str], str | None] = {}

    def _debugfs(self, request: str) -> str | None:
        key = ("cmd", request)
        if key not in self._cache:
            proc = subprocess.run(["debugfs", "-R", request, self.device], capture_output=True, check=False)
            err = proc.stderr.decode(errors="replace")
            failed = proc.returncode != 0 or "File not found" in err or "not found by ext2_lookup" in err
            self._cache[key] = None if failed else proc.stdout.decode(errors="replace")
        return self._cache[key]

    def _stat(self, path: str) -> str | None:
        return self._debugfs(f'stat "{path}"')

    def read(self, path: str) -> str | None:
        stat = self._stat(path)
        if not stat or "Type: regular" not in stat:
            return None
        return self._debugfs(f'cat "{path}"')

    def link(self, path: str) -> str | None:
        stat = self._stat(path)
        if not stat or "Type: symlink" not in stat:
            return None
        for line in stat.splitlines():
            if line.startswith("Fast link dest:"):
                return line.split(":", 1)[1].strip().strip('"')
        return self._debugfs(f'cat "{path}"')  # a long symlink keeps its target in a data block

    def listdir(self, path: str) -> list[str]:
        out = self._debugfs(f'ls -p "{path}"')
        if not out:
            return []
        names = []
        for line in out.splitlines():
            parts = line.strip("/").split("/")
            if len(parts) >= 5 and parts[4] not in (".", ".."):
                names.append(parts[4])
        return sorted(names)


def _magic(fh: object, offset: int, length: int) -> bytes:
    assert hasattr(fh, "seek") and hasattr(fh, "read")
    fh.seek(offset)
    data: bytes = fh.read(length)
    return data


def _fs_kind(path: str, offset: int) -> str:
    with open(path, "rb") as fh:
        if _magic(fh, offset + 1080, 2) == b"\x53\xef":
            return "ext"
        if _magic(fh, offset, 6) == b"LUKS\xba\xbe":
            return "luks"
        if _magic(fh, offset + 512, 8) == b"LABELONE" or _magic(fh, offset, 8) == b"LABELONE":
            return "lvm"
        if _magic(fh, offset, 4) == b"XFSB":
            return "xfs"
        if _magic(fh, offset + 0x10040, 8) == b"_BHRfS_M":
            return "btrfs"
        if _magic(fh, offset + 4086, 10) in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return "swap"
        if _magic(fh, offset + 0x52, 5) == b"FAT32" or _magic(fh, offset + 0x36, 3) == b"FAT":
            return "vfat"
    return "unknown"


def probe_format(path: str) -> str:
    """The disk format qemu-img sees, or ImageError with one line for a missing/unreadable file."""
    if not os.path.exists(path):
        raise ImageError(f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ImageError(f"cannot read disk image {path}: permission denied")
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not a disk image")
    try:
        proc = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True,
                              check=False, timeout=60)
    except FileNotFoundError:
        raise ImageError("qemu-img not found: apt-get install qemu-utils") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["qemu-img info failed"])[-1]
        raise ImageError(f"cannot read disk image {path}: {detail}")
    fmt = str(json.loads(proc.stdout).get("format", "raw"))
    if fmt not in DISK_FORMATS:
        raise ImageError(f"{path}: unsupported disk format {fmt!r} (sercon reads {', '.join(DISK_FORMATS)})")
    return fmt


def open_disk(path: str, workdir: Path) -> ImageFiles:
    """The files of the disk image at `path` (any qemu-img format); ImageError if it is not a disk."""
    fmt = probe_format(path)
    raw = path
    if fmt != "raw":
        raw = str(workdir / "disk.raw")
        proc = subprocess.run(["qemu-img", "convert", "-O", "raw", "-f", fmt, path, raw], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise ImageError(f"cannot read {fmt} disk {path}: {proc.stderr.strip().splitlines()[-1:]}")
    proc = subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True, check=False)
    parts: list[tuple[int, int, str]] = []  # (number, byte offset, type)
    table = "no partition table"
    if proc.returncode == 0 and proc.stdout.strip():
        info = json.loads(proc.stdout)["partitiontable"]
        table = {"dos": "MBR", "gpt": "GPT"}.get(info.get("label"), str(info.get("label")))
        sector = int(info.get("sectorsize", 512))
        for number, part in enumerate(info.get("partitions", []), 1):
            parts.append((number, int(part["start"]) * sector, str(part.get("type", ""))))
    else:
        parts.append((0, 0, ""))
    files = ImageFiles()
    kinds = []
    for number, offset, _ptype in parts:
        kind = _fs_kind(raw, offset)
        where = f"partition {number}" if number else "the whole disk"
        kinds.append(f"{kind} on {where}")
        if kind == "ext":
            source = Ext4Source(raw, offset)
            if source.exists("/etc") and ("/" not in files.sources):
                files.sources["/"] = source
                files.notes.append(f"root filesystem: ext4 on {where} (read with debugfs)")
            elif source.exists("/grub") or any(n.startswith("vmlinuz") for n in source.listdir("/")):
                files.sources["/boot"] = source
                files.notes.append(f"separate /boot: ext on {where}")
        elif kind in ("lvm", "luks", "xfs", "btrfs"):
            why = {"lvm": "an LVM physical volume (its logical volumes need activating, which needs root)",
                   "luks": "encrypted (LUKS)", "xfs": "XFS (no offline reader here)",
                   "btrfs": "btrfs (no offline reader here)"}[kind]
            files.notes.append(f"{where} is {why}: not read offline, checked live")
    if kinds and all(k.startswith("unknown") for k in kinds) and table == "no partition table":
        raise ImageError(f"{path}: not a disk image sercon can use (qemu-img sees {fmt}, with no partition table "
                         "and no filesystem)")
    if "/" not in files.sources:
        files.notes.append("no readable root filesystem found offline; the checks rely on the live boot")
    files.description = f"{fmt} disk, {table}: " + ", ".join(kinds)
    return files


def open_image(kernel: str | None, initrd: str | None, disk: str | None, workdir: Path) -> ImageFiles | None:
    """The files of a guest: its disk's root filesystem if it has one, else its initramfs."""
    if kernel and not os.path.exists(kernel):
        raise ImageError(f"no such file: {kernel}")
    if disk:
        files = open_disk(disk, workdir)
        if "/" in files.sources:
            return files
        if initrd:
            from_initrd = read_initrd(initrd)
            from_initrd.notes = [*files.notes, "the initramfs was read instead"]
            return from_initrd
        return files
    if initrd:
        return read_initrd(initrd)
    return None


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    """Where converted disks go: next to the sercon cache (large and sparse), removed afterwards."""
    from emulator import paths

    base = paths.cache() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="check-", dir=base)
