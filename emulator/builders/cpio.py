"""A tiny writer for the `newc` cpio format the Linux kernel unpacks as an initramfs.

Written here rather than shelling out to cpio(1) so that builds need no root, no fakeroot and no
host file ownership tricks: every entry is owned by root with the mode we choose.
"""

from __future__ import annotations

from typing import BinaryIO


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        encoded = name.lstrip("/").encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, nlink, 0, len(data),
            0, 0, 0, 0,  # dev major/minor, rdev major/minor
            len(encoded), 0,
        ]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._write_padded(header + encoded)
        self._write_padded(data)

    def _write_padded(self, blob: bytes) -> None:
        self._out.write(blob)
        self._out.write(b"\0" * (-len(blob) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        encoded = name.lstrip("/").encode() + b"\0"
        fields = [self._ino, 0o020000 | perm, 0, 0, 1, 0, 0, 0, 0, major, minor, len(encoded), 0]
        self._ino += 1
        self._write_padded(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
