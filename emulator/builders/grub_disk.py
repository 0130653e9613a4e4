"""Builder for a whole BIOS-bootable Debian disk (`builder = "grub_disk"`), such as debian-grub.

SeaBIOS -> GRUB (menu on the serial terminal, with a timeout) -> Debian's kernel -> systemd.
The root filesystem is the one `debian_rootfs` makes (same cached mmdebstrap tarball, same file
edits), plus `/boot/vmlinuz-*`, the small busybox initramfs as `/boot/initrd.img-*`, GRUB's
modules and a `grub.cfg`, and an `/etc/default/grub` that says what the `grub.cfg` does.

No loop mount: the disk is a plain file partitioned with `sfdisk`; `mkfs.ext4 -E offset=1048576
-d` fills the partition in place; GRUB's `boot.img` goes to sector 0 (partition table kept) and
a `grub-mkimage` core image (with biosdisk, part_msdos, ext2 built in) to the sectors after it,
which is what `grub-install` would do on a real disk.

Settings: `grub_serial` (false: GRUB on the screen only, the broken image readiness checks must
catch), `grub_timeout`, `cmdline` (kernel arguments; `console=ttyS0` last), and everything
`debian_rootfs` reads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ImageBuildError
from . import debian_rootfs

Log = Callable[[str], None]

#: Other builder modules whose source feeds this builder's cache key (see emulator.images.recipe_hash).
HASH_ALSO = ("debian_rootfs", "initramfs")

GRUB_DIR = Path("/usr/lib/grub/i386-pc")
#: Built into the core image: enough to read the partition and load normal.mod from it.
CORE_MODULES = ["biosdisk", "part_msdos", "ext2", "normal", "linux", "serial", "terminal", "terminfo",
                "echo", "configfile", "test", "search"]
PARTITION_START = 1 << 20  # bytes: sector 2048, as fdisk does; the core image lives before it


def inputs(recipe: dict[str, Any]) -> dict[str, Any]:
    resolved = debian_rootfs.inputs(recipe)
    grub_version = sorted(p.name for p in GRUB_DIR.glob("*.img")) if GRUB_DIR.is_dir() else []
    resolved["grub_images"] = grub_version
    return resolved


def grub_cfg(settings: dict[str, Any], release: str, *, root: str = "hd0,msdos1", part_module: str = "part_msdos",
             title: str = "debian-grub", serial_output: str = "serial console") -> str:
    """The menu: normal and rescue-target entries. `serial_output` is GRUB's terminal_output when on serial."""
    serial = bool(settings.get("grub_serial", True))
    timeout = int(settings.get("grub_timeout", 3))
    cmdline = settings.get("cmdline", "root=/dev/vda1 rw console=tty0 console=ttyS0,115200n8")
    lines = [f"# sercon {title}: hand-written, equivalent to what update-grub makes from /etc/default/grub"]
    if serial:
        lines += ["serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1",
                  "terminal_input serial console", f"terminal_output {serial_output}"]
    else:
        lines += ["terminal_input console", "terminal_output console"]
    lines += [f"set timeout={timeout}", "set timeout_style=menu", "set default=0", ""]
    for title, extra in (("Debian GNU/Linux", ""),
                         ("Debian GNU/Linux (rescue target)", " systemd.unit=rescue.target")):
        lines += [f"menuentry '{title}' {{",
                  f"\tinsmod {part_module}",
                  "\tinsmod ext2",
                  f"\tset root='{root}'",
                  f"\techo 'Loading Linux {release} ...'",
                  f"\tlinux /boot/vmlinuz-{release} {cmdline}{extra}",
                  "\techo 'Loading initial ramdisk ...'",
                  f"\tinitrd /boot/initrd.img-{release}",
                  "}"]
    return "\n".join(lines) + "\n"


def default_grub(settings: dict[str, Any], serial_output: str = "serial console") -> str:
    serial = bool(settings.get("grub_serial", True))
    cmdline = settings.get("cmdline", "root=/dev/vda1 rw console=tty0 console=ttyS0,115200n8")
    args = " ".join(w for w in cmdline.split() if not w.startswith(("root=", "rw", "ro")))
    text = ("# What /boot/grub/grub.cfg implements (sercon writes grub.cfg by hand; update-grub is not installed).\n"
            "GRUB_DEFAULT=0\n"
            f"GRUB_TIMEOUT={int(settings.get('grub_timeout', 3))}\n"
            "GRUB_TIMEOUT_STYLE=menu\n"
            "GRUB_DISTRIBUTOR=Debian\n"
            f'GRUB_CMDLINE_LINUX="{args}"\n')
    if serial:
        terminal = (f'GRUB_TERMINAL="{serial_output}"\n' if serial_output == "serial console" else
                    f'GRUB_TERMINAL_INPUT="serial console"\nGRUB_TERMINAL_OUTPUT="{serial_output}"\n')
        text += terminal + 'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
    else:
        text += "GRUB_TERMINAL=console\n"
    return text


def boot_tree(recipe: dict[str, Any], settings: dict[str, Any], resolved: dict[str, Any], tarball: Path,
              tmp: Path, log: Log, *, root_device: str = "/dev/vda1",
              serial_output: str = "serial console") -> tuple[Path, str, dict[str, str]]:
    """The configured root filesystem in `tmp/rootfs` with what a boot loader needs in /boot: Debian's
    vmlinuz, the busybox initramfs as initrd.img, and /etc/default/grub. Returns (rootfs, release, login).

    The boot loader itself (BIOS core image, or EFI binaries on an ESP) and grub.cfg are the caller's.
    """
    kernel_tree, release, busybox = debian_rootfs.kernel_parts(resolved, Path(recipe["downloads"]), tmp, log)
    rootfs = tmp / "rootfs"
    log("unpacking and configuring the root filesystem")
    debian_rootfs.unpack_rootfs(tarball, rootfs)
    login = debian_rootfs.configure_rootfs(rootfs, settings, settings.get("root_device", root_device))
    boot = rootfs / "boot"
    if not (boot / f"vmlinuz-{release}").is_file():
        shutil.copyfile(kernel_tree / "boot" / f"vmlinuz-{release}", boot / f"vmlinuz-{release}")
    log("writing the initramfs")
    debian_rootfs.write_initramfs(kernel_tree, release, busybox, settings.get("initramfs_modules", []),
                                  boot / f"initrd.img-{release}")
    (rootfs / "etc/default").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/default/grub").write_text(default_grub(settings, serial_output))
    return rootfs, release, login


def build(recipe: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    if not (GRUB_DIR / "boot.img").is_file():
        raise ImageBuildError(f"{GRUB_DIR}/boot.img not found: apt-get install grub-pc-bin (or `make setup` as root)")
    settings = debian_rootfs.settings_of(recipe)
    resolved = inputs(recipe)
    tarball = debian_rootfs.rootfs_tarball(recipe, resolved, log)
    with tempfile.TemporaryDirectory(prefix="sercon-build-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        rootfs, release, login = boot_tree(recipe, settings, resolved, tarball, tmp, log)
        grub = rootfs / "boot" / "grub"
        shutil.copytree(GRUB_DIR, grub / "i386-pc")
        (grub / "grub.cfg").write_text(grub_cfg(settings, release))

        disk = out / "disk.img"
        used = int(debian_rootfs.run(["du", "-sxm", str(rootfs)]).split()[0])
        part_mb = used * 5 // 4 + 256
        total = PARTITION_START + part_mb * (1 << 20)
        with disk.open("wb") as fh:
            fh.truncate(total)
        log(f"partitioning a {total >> 20} MiB disk (sfdisk)")
        debian_rootfs.run(["sfdisk", "-q", str(disk)], input=f"label: dos\nstart={PARTITION_START // 512}, type=83, "
                          "bootable\n", what="sfdisk")
        log("filling the partition (mkfs.ext4 -E offset=1048576 -d)")
        debian_rootfs.make_ext4(rootfs, disk, label="sercon-root", offset=PARTITION_START, size_mb=part_mb)

        log("installing GRUB (boot.img in sector 0, core.img after it)")
        core = tmp / "core.img"
        debian_rootfs.run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "(hd0,msdos1)/boot/grub",
                           *CORE_MODULES], what="grub-mkimage")
        core_bytes = core.read_bytes()
        if len(core_bytes) > PARTITION_START - 512:
            raise ImageBuildError(
                f"GRUB core image is {len(core_bytes)} bytes: too big for the gap before the partition")
        boot_img = (GRUB_DIR / "boot.img").read_bytes()
        with disk.open("r+b") as fh:
            mbr = bytearray(fh.read(512))
            mbr[:440] = boot_img[:440]  # the code; the disk signature and partition table stay
            fh.seek(0)
            fh.write(mbr)
            fh.seek(512)
            fh.write(core_bytes)
        where = "serial and screen" if settings.get("grub_serial", True) else "screen only"
        log(f"disk.img: {total >> 20} MiB (sparse file), GRUB on {where}")

    return {
        "disk": "disk.img",
        "disk_format": "raw",
        "disk_snapshot": True,
        "memory_mb": int(settings.get("memory_mb", 512)),
        **login,
    }
