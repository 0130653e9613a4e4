"""Builder for Debian systemd guests on an ext4 disk (`builder = "debian_rootfs"`), such as debian-systemd.

Steps, none of which needs a loop mount, nbd or a FUSE mount:

1. `mmdebstrap` (minbase plus the recipe's packages, from the Debian mirrors the host's apt uses)
   writes a root filesystem tarball. Debian's kernel package (the same version `-kernel` boots) is
   unpacked into it by a customize hook, and `depmod` runs inside, so udev can load modules. The
   tarball is cached by its own key (suite, packages, mirrors, kernel) under
   `$SERCON_CACHE/rootfs/`, so variants of a recipe (other settings) only redo the fast steps.
2. The tarball is unpacked into a temporary folder and configured by editing files: hostname, root
   password, `serial-getty@ttyS0` (enabled or masked), sysctl settings, `TMOUT`, fstab.
3. `mkfs.ext4 -d` turns the folder into a disk image; a busybox initramfs that loads virtio_blk
   and ext4 (in the dependency order read from each module's `.modinfo`) mounts it and
   `switch_root`s to systemd. The kernel boots as the uncompressed vmlinux through its PVH entry.

Unpacking a tarball with its owners and running mmdebstrap in root mode need root (mmdebstrap's
own requirement); the error says so. `emulator.builders.grub_disk` reuses steps 1-2 for a whole
bootable disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ImageBuildError
from . import debian_packages
from .cpio import CpioWriter
from .initramfs import add_busybox_base, hash_password
from .kernel import install_kernel

Log = Callable[[str], None]

#: Other builder modules whose source feeds this builder's cache key (see emulator.images.recipe_hash).
HASH_ALSO = ("initramfs",)

#: Always installed: systemd as init, udev (without it the ttyS0 getty never starts), kmod (depmod,
#: and udev's module loading).
BASE_PACKAGES = ["systemd-sysv", "udev", "kmod"]

#: What a ready image sets (shared/reference section 5): every SysRq key, NMI -> panic, reboot 10 s
#: after a panic. A value of None (from a Python override) leaves the key out, so the distribution's
#: default applies (for kernel.sysrq that is systemd's 16: sync only).
DEFAULT_SYSCTL: dict[str, int | None] = {"kernel.sysrq": 1, "kernel.unknown_nmi_panic": 1, "kernel.panic": 10}

#: Module folders left out of the guest's /lib/modules (hardware a QEMU `pc` guest does not have).
PRUNED_MODULES = ["drivers/gpu", "drivers/net/wireless", "drivers/net/ethernet", "drivers/media",
                  "drivers/infiniband", "drivers/staging", "drivers/bluetooth", "drivers/iio", "drivers/isdn",
                  "drivers/mmc", "drivers/usb/gadget", "drivers/scsi/qla2xxx", "drivers/scsi/lpfc",
                  "drivers/net/can", "sound", "net/bluetooth", "net/mac80211", "net/wireless"]

INIT_SCRIPT = r"""#!/bin/sh
# sercon initramfs for Debian disk guests: load the disk and filesystem drivers, mount the root
# filesystem named by root= and hand over to its init (systemd, or init= from the command line).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"; done
root=/dev/vda; init=/sbin/init; mode=ro
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${arg#root=}";;
    init=*) init="${arg#init=}";;
    rw) mode=rw;;
    ro) mode=ro;;
  esac
done
case "$root" in LABEL=*|UUID=*) dev=""; ;; *) dev="$root";; esac
tries=0
while :; do
  [ -z "$dev" ] && dev=$(findfs "$root" 2>/dev/null)
  [ -n "$dev" ] && [ -b "$dev" ] && break
  dev=""; case "$root" in LABEL=*|UUID=*) ;; *) dev="$root";; esac
  tries=$((tries + 1))
  if [ $tries -gt 300 ]; then
    echo "initramfs: root device $root did not appear; dropping to a shell"; exec sh
  fi
  sleep 0.1
done
mkdir -p /newroot
if ! mount -t ext4 -o $mode "$dev" /newroot; then
  echo "initramfs: cannot mount $dev; dropping to a shell"; exec sh
fi
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
"""


# ----------------------------------------------------------------- helpers


def run(args: list[str], *, log: Log | None = None, what: str = "", **kwargs: Any) -> str:
    """Run a host tool; an ImageBuildError naming the tool (and its package) if it fails or is missing."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError as exc:
        package = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "sfdisk": "fdisk",
                   "grub-mkimage": "grub-pc-bin", "tar": "tar"}.get(args[0], args[0])
        raise ImageBuildError(f"{args[0]} not found: apt-get install {package} (or `make setup` as root)") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
        raise ImageBuildError(f"{what or args[0]} failed (exit {proc.returncode}): {detail}")
    return str(proc.stdout)


def settings_of(recipe: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = dict(recipe.get("settings", {}))
    settings["sysctl"] = {**DEFAULT_SYSCTL, **settings.get("sysctl", {})}
    return settings


def host_debian_sources(suite: str) -> list[str]:
    """One-line `deb URI SUITE COMPONENTS` entries for the Debian archive the host's apt uses.

    Reads /etc/apt/sources.list and the deb822 `*.sources` files; keeps entries whose suite is
    `suite` or `suite-*` (bookworm, bookworm-updates, bookworm-security), so mmdebstrap fetches
    from the same mirror, security suite included (the current kernel package sits there).
    """
    entries: list[tuple[str, str, str]] = []
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for s in fields.get("suites", "").split():
                        entries.append((uri, s, fields.get("components", "main")))
        elif f.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 4 and words[0] == "deb":
                    entries.append((words[1], words[2], " ".join(words[3:])))
    lines = [f"deb {uri} {s} {comps}" for uri, s, comps in entries if s == suite or s.startswith(suite + "-")]
    if not any(s == suite for _, s, _ in entries):
        raise ImageBuildError(
            f"the host's apt sources have no `{suite}` suite to build the guest from; add the Debian mirror "
            f"(e.g. `deb http://deb.debian.org/debian {suite} main`) to /etc/apt/sources.list and run apt-get update"
        )
    return lines


def host_suite() -> str:
    """The host's Debian codename (the guest is built from the same release, so the kernel matches)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise ImageBuildError("cannot read VERSION_CODENAME from /etc/os-release; set `suite` in the recipe")


def mmdebstrap_version() -> str:
    return run(["mmdebstrap", "--version"]).strip()


# ------------------------------------------------------------- kernel bits


def modinfo_depends(ko: bytes) -> list[str]:
    """The `depends=` list from a kernel module's `.modinfo` ELF section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ImageBuildError("not a 64-bit ELF kernel module")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    sections = []
    for i in range(shnum):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        sections.append((name, offset, size))
    strtab_off = sections[shstrndx][1]
    for name, offset, size in sections:
        end = ko.index(b"\0", strtab_off + name)
        if ko[strtab_off + name : end] == b".modinfo":
            for item in ko[offset : offset + size].split(b"\0"):
                if item.startswith(b"depends="):
                    return [d for d in item[8:].decode().split(",") if d]
            return []
    return []


def module_load_order(modules_dir: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of `wanted` modules and everything they depend on, dependencies first."""
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        if key not in index:
            raise ImageBuildError(f"kernel module {name} (needed by {' <- '.join(chain) or 'the recipe'}) not found")
        seen.add(key)
        for dep in modinfo_depends(index[key].read_bytes()):
            visit(dep, (*chain, name))
        order.append((key, index[key]))

    for mod in wanted:
        visit(mod, ())
    return order


def write_initramfs(kernel_tree: Path, release: str, busybox: Path, modules: list[str], out: Path) -> list[str]:
    """A small busybox initramfs that loads `modules` (with dependencies) and boots the disk's init."""
    order = module_load_order(kernel_tree / "lib" / "modules" / release, modules)
    blob = io.BytesIO()
    cpio = CpioWriter(blob)
    add_busybox_base(cpio, busybox, ("newroot",))
    for name, path in order:
        cpio.file(f"lib/modules/{name}.ko", path.read_bytes())
    cpio.file("etc/modules", ("\n".join(name for name, _ in order) + "\n").encode())
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.close()
    out.write_bytes(blob.getvalue())
    return [name for name, _ in order]


# ------------------------------------------------------------------- rootfs


def inputs(recipe: dict[str, Any]) -> dict[str, Any]:
    packages = recipe.get("packages", {})
    resolved: dict[str, Any] = {}
    for role in ("kernel", "busybox"):
        name = packages.get(role)
        if not name:
            raise ImageBuildError(f"recipe {recipe['name']}: [packages] needs `{role}`")
        real, version = debian_packages.resolve(name)
        resolved[role] = f"{real}={version}"
    suite = recipe.get("suite") or host_suite()
    resolved["suite"] = suite
    resolved["sources"] = host_debian_sources(suite)
    resolved["include"] = sorted(set(BASE_PACKAGES) | set(packages.get("include", [])))
    return resolved


def rootfs_tarball(recipe: dict[str, Any], resolved: dict[str, Any], log: Log) -> Path:
    """The mmdebstrap tarball (kernel modules included) for these inputs, built once and cached."""
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building Debian disk images runs mmdebstrap in root mode and unpacks a root filesystem with its "
            "owners: run the build as root (e.g. `sudo .venv/bin/sercon image build NAME`), once; the image is cached"
        )
    key_src = repr((resolved["suite"], resolved["sources"], resolved["include"], resolved["kernel"],
                    mmdebstrap_version())).encode()
    key = hashlib.sha256(key_src).hexdigest()[:16]
    root = paths.cache() / "rootfs"
    tarball = root / f"{resolved['suite']}-{key}.tar"
    if tarball.is_file():
        log(f"reusing the Debian root filesystem {tarball.name}")
        return tarball
    root.mkdir(parents=True, exist_ok=True)
    kernel_name, kernel_version = resolved["kernel"].split("=", 1)
    log(f"downloading {kernel_name} {kernel_version}")
    kernel_deb = debian_packages.download(kernel_name, kernel_version, Path(recipe["downloads"]))
    release = kernel_name.removeprefix("linux-image-")
    tmp = tarball.with_suffix(".partial.tar")
    tmp.unlink(missing_ok=True)
    log(f"running mmdebstrap ({resolved['suite']}, minbase + {', '.join(resolved['include'])}); about 20 s")
    run(["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
         f"--include={','.join(resolved['include'])}",
         # --keep-directory-symlink: /lib is a symlink to usr/lib (merged /usr); `dpkg-deb -x` would
         # replace it with a directory and break the root filesystem.
         f'--customize-hook=dpkg-deb --fsys-tarfile "{kernel_deb}" | tar -x --keep-directory-symlink -C "$1"',
         # Drivers a virtual serial-console guest never needs (about 300 MB of the 400).
         f'--customize-hook=cd "$1/usr/lib/modules/{release}/kernel" && rm -rf {" ".join(PRUNED_MODULES)}',
         f'--customize-hook=chroot "$1" /sbin/depmod -a {release}',
         # Smaller image: no apt lists or docs in the guest.
         "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/usr/share/doc/* \"$1\"/usr/share/man/*",
         resolved["suite"], str(tmp), *resolved["sources"]],
        what="mmdebstrap")
    if not tmp.is_file():
        raise ImageBuildError(f"mmdebstrap reported success but wrote no {tmp}")
    tmp.rename(tarball)
    return tarball


def unpack_rootfs(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(dest)], what="unpacking the root filesystem")


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _symlink(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def configure_rootfs(root: Path, settings: dict[str, Any], root_device: str) -> dict[str, str]:
    """Apply the recipe's settings by editing files in the unpacked root filesystem; returns the login."""
    hostname = str(settings.get("hostname", "sercon"))
    _write(root, "etc/hostname", hostname + "\n")
    _write(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    _write(root, "etc/fstab", f"# written by sercon's debian_rootfs builder\n{root_device}\t/\text4\tdefaults\t0\t0\n")

    password = str(settings.get("password", "sercon"))
    user = str(settings.get("user", "root"))
    pw_hash = hash_password(password)
    root_hash = pw_hash if settings.get("root_password", True) else "*"
    shadow = root / "etc/shadow"
    lines = [f"root:{root_hash}:" + ":".join(line.split(":")[2:]) if line.startswith("root:") else line
             for line in shadow.read_text().splitlines()]
    if user != "root":
        home = f"/home/{user}"
        with (root / "etc/passwd").open("a") as fh:
            fh.write(f"{user}:x:1000:1000:{user}:{home}:/bin/bash\n")
        with (root / "etc/group").open("a") as fh:
            fh.write(f"{user}:x:1000:\n")
        lines.append(f"{user}:{pw_hash}:19000:0:99999:7:::")
        (root / home.lstrip("/")).mkdir(parents=True, exist_ok=True)
        os.chown(root / home.lstrip("/"), 1000, 1000)
    shadow.write_text("\n".join(lines) + "\n")
    if settings.get("hushlogin", True):
        # No "Last login: ..." / MOTD banner after logging in: less noise on the console.
        for home_dir in {"root", f"home/{user}" if user != "root" else "root"}:
            _write(root, f"{home_dir}/.hushlogin", "")

    for number, extra in enumerate(settings.get("users", [])):
        _add_user(root, extra, 1001 + number)
    for rel, text in sorted(settings.get("files", {}).items()):
        _write(root, rel.lstrip("/"), str(text), 0o755 if str(text).startswith("#!") else 0o644)
        owner = re.match(r"/?home/([^/]+)/", rel)
        if owner:  # a file in a user's home belongs to that user
            uid = next((1001 + n for n, u in enumerate(settings.get("users", [])) if u["name"] == owner.group(1)),
                       1000)
            os.chown(root / rel.lstrip("/"), uid, uid)
    if settings.get("autologin"):
        # agetty --autologin: a shell on ttyS0 with no login prompt at all.
        _write(root, "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
               "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin "
               f"{settings['autologin']} --keep-baud 115200,57600,38400,9600 %I $TERM\n")

    getty = settings.get("getty", "enabled")
    unit = "etc/systemd/system/serial-getty@ttyS0.service"
    wants = "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
    if getty == "enabled":
        _symlink(root, wants, "/lib/systemd/system/serial-getty@.service")
    elif getty == "masked":
        # systemd-getty-generator would start a getty on the kernel console by itself: masking is
        # what it takes to have none (the broken image the readiness check must catch).
        _symlink(root, unit, "/dev/null")
    elif getty != "default":
        raise ImageBuildError(f"settings.getty must be \"enabled\", \"masked\" or \"default\", not {getty!r}")

    sysctl = {k: v for k, v in settings.get("sysctl", {}).items() if v is not None}
    if sysctl:
        body = "".join(f"{k} = {v}\n" for k, v in sorted(sysctl.items()))
        _write(root, "etc/sysctl.d/90-sercon.conf", "# sercon: serial console readiness (SysRq, NMI, panic)\n" + body)
    tmout = int(settings.get("tmout", 600))
    if tmout > 0:
        _write(root, "etc/profile.d/sercon-tmout.sh",
               f"# Idle console shells log out after {tmout} s (Azure's advice for serial consoles).\n"
               f"TMOUT={tmout}\nexport TMOUT\n")
    # A clean machine-id for each boot of a fresh image (systemd writes one on first boot).
    _write(root, "etc/machine-id", "")
    return {"user": user, "password": password}


def _add_user(root: Path, user: dict[str, Any], uid: int) -> None:
    """A further login user: {name, shell, password (default "sercon"), expired (must change it at login)}."""
    name, shell = str(user["name"]), str(user.get("shell", "/bin/bash"))
    home = root / "home" / name
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, uid)
    with (root / "etc/passwd").open("a") as fh:
        fh.write(f"{name}:x:{uid}:{uid}:{name}:/home/{name}:{shell}\n")
    with (root / "etc/group").open("a") as fh:
        fh.write(f"{name}:x:{uid}:\n")
    last_change = "0" if user.get("expired") else "19000"  # 0: the password must be changed at the next login
    with (root / "etc/shadow").open("a") as fh:
        fh.write(f"{name}:{hash_password(str(user.get('password', 'sercon')))}:{last_change}:0:99999:7:::\n")
    shells = root / "etc/shells"
    if shells.is_file() and shell not in shells.read_text().split():
        with shells.open("a") as fh:
            fh.write(shell + "\n")


def make_ext4(root: Path, image: Path, *, label: str, offset: int = 0, extra_mb: int = 256,
              size_mb: int | None = None) -> int:
    """`mkfs.ext4 -d` from a folder into `image` at byte `offset`; returns the filesystem size in MiB."""
    used = int(run(["du", "-sxm", str(root)]).split()[0])
    mb = size_mb or (used * 5 // 4 + extra_mb)
    args = ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(root)]
    if offset:
        args += ["-E", f"offset={offset}"]
    run([*args, str(image), f"{mb}M"], what="mkfs.ext4 -d")
    return mb


def kernel_parts(resolved: dict[str, Any], downloads: Path, tmp: Path, log: Log) -> tuple[Path, str, Path]:
    """(unpacked kernel package folder, kernel release, busybox binary)."""
    trees = {}
    for role in ("kernel", "busybox"):
        name, version = resolved[role].split("=", 1)
        deb = debian_packages.download(name, version, downloads)
        log(f"unpacking {deb.name}")
        trees[role] = debian_packages.extract(deb, tmp / role)
    vmlinuz = next(iter(sorted((trees["kernel"] / "boot").glob("vmlinuz-*"))), None)
    busybox = trees["busybox"] / "bin" / "busybox"
    if vmlinuz is None or not busybox.is_file():
        raise ImageBuildError("the kernel or busybox package did not contain the expected files")
    return trees["kernel"], vmlinuz.name.removeprefix("vmlinuz-"), busybox


def build(recipe: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    settings = settings_of(recipe)
    resolved = inputs(recipe)
    tarball = rootfs_tarball(recipe, resolved, log)
    with tempfile.TemporaryDirectory(prefix="sercon-build-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        kernel_tree, release, busybox = kernel_parts(resolved, Path(recipe["downloads"]), tmp, log)
        vmlinuz = kernel_tree / "boot" / f"vmlinuz-{release}"
        kernel_file = install_kernel(vmlinuz, out, settings.get("boot", "pvh"), recipe["name"], log)
        log("writing the initramfs")
        loaded = write_initramfs(kernel_tree, release, busybox, settings.get("initramfs_modules", []),
                                 out / "initramfs.cpio")
        log(f"initramfs loads: {' '.join(loaded)}")

        rootfs = tmp / "rootfs"
        log("unpacking and configuring the root filesystem")
        unpack_rootfs(tarball, rootfs)
        login = configure_rootfs(rootfs, settings, "/dev/vda")
        log("making the ext4 disk image (mkfs.ext4 -d)")
        size = make_ext4(rootfs, out / "disk.img", label="sercon-root")
        log(f"disk.img: {size} MiB ext4 (sparse file)")

    return {
        "kernel": kernel_file,
        "initrd": "initramfs.cpio",
        "disk": "disk.img",
        "disk_format": "raw",
        # The cached image is never written: each boot gets a throw-away overlay.
        "disk_snapshot": True,
        "append": settings.get("append", "root=/dev/vda rw console=ttyS0,115200n8"),
        "memory_mb": int(settings.get("memory_mb", 512)),
        **login,
    }
