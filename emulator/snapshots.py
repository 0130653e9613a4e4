"""Guest snapshots: a running guest's whole state (RAM, CPU, devices, the UART) saved to a file
and loaded into new QEMU processes, so a test gets a fresh logged-in guest in well under a second.

Why migration to a file, not QEMU's internal qcow2 snapshots (savevm/loadvm): internal snapshots
need a qcow2 disk to hold the state (the default guest has no disk at all), `snapshot-load` runs
in a QEMU that has already booted its firmware, and the state can only be used by the one disk
image. A migration stream (`migrate` to a file, `-incoming fd:N` to load) needs no disk, restores
straight into a new process before the first guest instruction, and is one read-only file that
any number of guests can load at once.

Guest RAM is not in the stream. A guest that boots keeps its RAM in a shared memfd; saving
turns on QEMU's `x-ignore-shared` migration capability, so the stream holds only the device state
(under 1 MB), and the RAM is copied as it is, sparse, to `ram.bin`. A restore maps `ram.bin`
private (`memory-backend-file,share=off`): nothing is read up front, pages come from the page
cache on first touch, and guests restored from one snapshot share every page none of them
writes. A guest that was itself restored has private RAM, which QEMU cannot skip; its snapshot
streams the RAM as before (`"ram": "stream"` in meta.json). `make bench` measures both the
restore time and the memory of ten restored guests against ten booted ones.

A snapshot lives in `$SERCON_CACHE/snapshots/NAME-KEY/` (`state.bin`, `ram.bin`, `meta.json`). KEY hashes
everything the state depends on: the QEMU binary and version, the accelerator, and the guest
spec's hardware (machine, memory, CPUs, devices, kernel/initrd/disk identity). A snapshot whose
metadata does not match, whose state or RAM file is truncated or altered (BLAKE2 digests; the
RAM file's is checked again whenever its size or time changes), or which QEMU refuses to load is
reported in one line and never used.

A UEFI guest's snapshot also keeps its copy of the firmware variables (`efivars.fd`, see
emulator/firmware.py) next to `disk.qcow2`: the firmware's NVRAM is part of the machine's state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import paths
from .errors import SnapshotError
from .spec import GuestSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RAM_FILE = "ram.bin"
#: Bumped when what a saved state needs from the command line changes (2: RAM is a memory backend).
LAYOUT = 2


@dataclass
class Snapshot:
    name: str
    folder: Path
    meta: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.folder / "state.bin"

    @property
    def ram(self) -> Path | None:
        """The RAM file to map, or None when the RAM is inside the state stream."""
        return self.folder / RAM_FILE if self.meta.get("ram") == "file" else None


_QEMU_VERSIONS: dict[str, str] = {}


def known_qemu_version(qemu: str) -> str | None:
    """`qemu_version` when it is already known (in this process or the cache folder), else None:
    a stat and a small read, no `qemu --version`."""
    memo = _qemu_memo(qemu)
    if memo not in _QEMU_VERSIONS:
        line = _cached_versions().get(memo)
        if not isinstance(line, str):
            return None
        _QEMU_VERSIONS[memo] = f"{line} ({memo})"
    return _QEMU_VERSIONS[memo]


def _qemu_memo(qemu: str) -> str:
    stat = os.stat(qemu)
    return f"{qemu}:{stat.st_size}:{stat.st_mtime_ns}"


def _cached_versions() -> dict[str, Any]:
    try:
        known = json.loads((paths.cache() / "qemu-versions.json").read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def qemu_version(qemu: str) -> str:
    """QEMU's version line and the binary's identity. `qemu --version` takes ~10 ms, and every
    owner that restores a snapshot needs it: the answer is kept per binary version, in this
    process and in the cache folder."""
    known_line = known_qemu_version(qemu)
    if known_line is not None:
        return known_line
    memo = _qemu_memo(qemu)
    cache_file = paths.cache() / "qemu-versions.json"
    known = _cached_versions()
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False).stdout
    line = out.splitlines()[0] if out else "unknown"
    if out:
        known = {k: v for k, v in known.items() if os.path.exists(k.rsplit(":", 2)[0])} | {memo: line}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            tmp.replace(cache_file)
        except OSError:
            pass  # a read-only cache: asked again next time
    _QEMU_VERSIONS[memo] = f"{line} ({memo})"
    return _QEMU_VERSIONS[memo]


def _file_identity(path: str | None) -> str | None:
    if not path:
        return None
    stat = os.stat(path)
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def snapshot_key(spec: GuestSpec, accel: str, hypervisor: str) -> str:
    """Hash of what a saved state depends on; anything else (policy, login) may differ.

    `hypervisor` names the QEMU that saves and loads it (`Backend.hypervisor_id`: the local
    binary's version, or a libvirt host's URI and QEMU version)."""
    hardware = {
        "qemu": hypervisor,
        "accel": accel,
        "kernel": _file_identity(spec.kernel),
        "initrd": _file_identity(spec.initrd),
        "disk": _file_identity(spec.disk),
        "append": spec.append,
        "disk_format": spec.disk_format,
        "disk_interface": spec.disk_interface,
        "memory_mb": spec.memory_mb,
        "cpus": spec.cpus,
        "machine": spec.machine,
        "pvpanic": spec.pvpanic,
        "extra_args": spec.extra_args,
        "layout": LAYOUT,
    }
    if spec.host:  # a libvirt host keeps the state: it restores there (added only then, as below)
        hardware["host"] = spec.host
    if spec.firmware:  # added only for UEFI guests, so BIOS guests keep their snapshots' keys
        hardware.update(firmware=_file_identity(spec.firmware), firmware_vars=_file_identity(spec.firmware_vars),
                        secure_boot=spec.secure_boot)
    return hashlib.sha256(json.dumps(hardware, sort_keys=True).encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise SnapshotError(f"invalid snapshot name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def folder_for(name: str, key: str) -> Path:
    return paths.cache() / "snapshots" / f"{check_name(name)}-{key}"


def digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find(name: str, key: str) -> Snapshot:
    """The valid snapshot `name` for this key, or SnapshotError saying why there is none."""
    folder = folder_for(name, key)
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        others = sorted(p.name for p in folder.parent.glob(f"{name}-*")) if folder.parent.exists() else []
        hint = (f" (snapshots named {name} exist for other images, QEMU versions or accelerators: {', '.join(others)})"
                if others else "")
        raise SnapshotError(f"no snapshot named {name!r} for this guest spec{hint}; save one with "
                            f"`sercon snapshot GUEST {name}`")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise SnapshotError(f"snapshot {name!r} has unreadable metadata ({exc}); it will be rebuilt") from exc
    snap = Snapshot(name, folder, meta)
    if meta.get("key") != key:
        raise SnapshotError(f"snapshot {name!r} is stale: made for key {meta.get('key')}, this guest needs {key}")
    if not snap.state.exists() or snap.state.stat().st_size != meta.get("size"):
        raise SnapshotError(f"snapshot {name!r} is corrupt: its state file is missing or truncated")
    if digest(snap.state) != meta.get("digest"):
        raise SnapshotError(f"snapshot {name!r} is corrupt: its state file does not match its digest")
    if snap.ram is not None:
        _check_ram(snap)
    return snap


def _ram_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def _check_ram(snap: Snapshot) -> None:
    """The RAM file's size and digest; the digest (~0.3 s a GiB) only when the file changed since
    it was last found good, which `ram.ok` remembers."""
    ram = snap.folder / RAM_FILE
    if not ram.exists() or ram.stat().st_size != snap.meta.get("ram_size"):
        raise SnapshotError(f"snapshot {snap.name!r} is corrupt: its RAM file is missing or truncated")
    verified = snap.folder / "ram.ok"
    stamp = _ram_stamp(ram)
    if verified.exists() and verified.read_text() == stamp:
        return
    if digest(ram) != snap.meta.get("ram_digest"):
        raise SnapshotError(f"snapshot {snap.name!r} is corrupt: its RAM file does not match its digest")
    _write_private(verified, stamp)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def copy_sparse(source: Path, target: Path, chunk: int = 1 << 20) -> int:
    """Copy `source` (guest RAM) to `target`, leaving holes where it is all zeros; returns the size."""
    zeros = bytes(chunk)
    size = 0
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(chunk):
            if block == zeros[: len(block)]:
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
            size += len(block)
        dst.truncate(size)
    return size


def prepare(name: str, key: str) -> Path:
    """A fresh temporary folder to save into; `commit()` moves it into place."""
    final = folder_for(name, key)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, name: str, key: str, meta: dict[str, Any]) -> Snapshot:
    state = tmp / "state.bin"
    meta = {"ram": "stream", **meta, "name": name, "key": key, "size": state.stat().st_size,
            "digest": digest(state), "created": time.time(), "layout": LAYOUT}
    ram = tmp / RAM_FILE
    if ram.exists():
        meta.update(ram="file", ram_size=ram.stat().st_size, ram_digest=digest(ram))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    final = folder_for(name, key)
    discard(final)
    tmp.rename(final)
    if meta["ram"] == "file":
        _write_private(final / "ram.ok", _ram_stamp(final / RAM_FILE))  # just digested
    return Snapshot(name, final, meta)


def discard(folder: Path) -> None:
    """Remove a snapshot folder, and the state it keeps on a libvirt host, if any."""
    meta_file = folder / "meta.json"
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            meta = {}
        if meta.get("host_volume"):
            from .libvirt_host import forget_host_snapshot

            forget_host_snapshot(meta)
    if folder.exists():
        trash = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def list_snapshots() -> list[dict[str, Any]]:
    root = paths.cache() / "snapshots"
    found = []
    for meta_file in sorted(root.glob("*/meta.json")) if root.exists() else []:
        try:
            found.append({**json.loads(meta_file.read_text()), "folder": str(meta_file.parent)})
        except ValueError:
            continue
    return found


def remove(name: str) -> list[Path]:
    """Delete every snapshot named `name` (all its keys); SnapshotError if there is none."""
    root = paths.cache() / "snapshots"
    found = [p for p in root.glob(f"{check_name(name)}-*") if (p / "meta.json").exists()] if root.exists() else []
    found = [p for p in found if json.loads((p / "meta.json").read_text()).get("name") == name]
    if not found:
        raise SnapshotError(f"no snapshot named {name!r}; `sercon snapshots` lists them")
    for folder in found:
        discard(folder)
    return found


def stale(qemu: str | None = None) -> list[tuple[Path, str]]:
    """Snapshots no guest will load again, with the reason: an older format or QEMU, superseded by
    a newer one of the same name and image (the image was rebuilt), or a save that never finished."""
    root = paths.cache() / "snapshots"
    if not root.exists():
        return []
    found: list[tuple[Path, str]] = [(p, "an unfinished save or removal") for p in root.glob(".*")
                                     if p.is_dir() and (p.name.endswith(".saving") or p.name.endswith(".old"))]
    current_qemu = qemu_version(qemu) if qemu else None
    newest: dict[tuple[str, str], tuple[float, Path]] = {}
    metas = []
    for meta in list_snapshots():
        folder = Path(meta["folder"])
        layout = meta.get("layout") or (2 if "ram" in meta else 1)
        if layout != LAYOUT:
            found.append((folder, f"snapshot format {layout}, this sercon loads {LAYOUT}"))
            continue
        local = meta.get("backend", "local") == "local"  # a libvirt host's QEMU is checked when it restores
        if local and current_qemu and meta.get("qemu") and meta["qemu"] != current_qemu:
            found.append((folder, f"made by another QEMU ({meta['qemu'].split(' (')[0]})"))
            continue
        metas.append((meta, folder))
        slot = (meta["name"], str(meta.get("image")))
        if slot not in newest or meta.get("created", 0) > newest[slot][0]:
            newest[slot] = (meta.get("created", 0), folder)
    for meta, folder in metas:
        if newest[(meta["name"], str(meta.get("image")))][1] != folder:
            found.append((folder, f"superseded by a newer {meta['name']!r} of image {meta.get('image')}"))
    return found


def size_on_disk(folder: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())
