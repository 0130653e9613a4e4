"""Builder for a whole UEFI-bootable Debian disk (`builder = "uefi_disk"`): debian-uefi and debian-uefi-secureboot.

OVMF (q35, its console on COM1) -> `\\EFI\\BOOT\\BOOTX64.EFI` on the EFI system partition -> GRUB EFI
(menu on the serial terminal) -> Debian's kernel -> systemd. With `secure_boot = true`,
BOOTX64.EFI is Debian's signed shim (Microsoft's UEFI CA signature) and grubx64.efi next to it
is Debian's signed GRUB, so OVMF with Microsoft's keys enrolled verifies shim, shim verifies GRUB
and GRUB (through shim) verifies the kernel.

The disk, as Debian's installer lays it out: GPT, partition 1 the ESP (FAT32), partition 2 the
ext4 root filesystem with the kernel in /boot and the real GRUB configuration in
/boot/grub/grub.cfg. The ESP's `\\EFI\\debian\\grub.cfg` is the stub that points at it (what
`grub-install` writes), which is where the signed GRUB looks first. The root filesystem, kernel
and initramfs come from `grub_disk.boot_tree` (the same as debian-grub's).

No loop mount: the ESP is made as a file with `mkfs.fat` and filled with mtools (`mmd`, `mcopy`),
then copied into the GPT disk that `sfdisk` partitioned; the root partition is filled in place
with `mkfs.ext4 -E offset=... -d`.

Settings: `secure_boot`, `grub_serial`, `grub_timeout`, `cmdline`, `firmware_menu_wait_ms` (how long
OVMF offers its boot manager: Esc during that time opens it), `ovmf` (where the firmware comes from:
"host" for /usr/share/OVMF, or a Debian suite whose `ovmf` package is fetched, see firmware.py), and
everything `debian_rootfs` reads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ImageBuildError
from ..firmware import find_ovmf, ovmf_folder
from . import debian_rootfs, grub_disk

Log = Callable[[str], None]

HASH_ALSO = ("debian_rootfs", "initramfs", "grub_disk")

GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
SIGNED_GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
SIGNED_SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
SIGNED_MOKMANAGER = Path("/usr/lib/shim/mmx64.efi.signed")
#: Built into the unsigned GRUB EFI image (it reads no modules from disk).
EFI_MODULES = ["part_gpt", "part_msdos", "fat", "ext2", "normal", "linux", "serial", "terminal", "terminfo",
               "echo", "configfile", "test", "search", "search_label", "search_fs_uuid", "efi_gop",
               "all_video", "gzio", "boot", "chain", "reboot", "halt", "sleep", "cat", "ls", "loadenv",
               "efifwsetup", "lsefi"]
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MIB = 1 << 20
ESP_START = MIB
ESP_MB = 64
ESP_LABEL = "SERCON-ESP"
ROOT_LABEL = "sercon-root"
#: Where the ESP's stub grub.cfg lives: GRUB's prefix in Debian's signed image is /EFI/debian.
ESP_GRUB_DIR = "EFI/debian"


def _needed(secure_boot: bool) -> list[tuple[Path, str]]:
    files = [(GRUB_EFI_DIR / "kernel.img", "grub-efi-amd64-bin"), (Path("/usr/bin/mcopy"), "mtools"),
             (Path("/usr/sbin/mkfs.fat"), "dosfstools")]
    if secure_boot:
        files += [(SIGNED_SHIM, "shim-signed"), (SIGNED_GRUB, "grub-efi-amd64-signed")]
    return files


def inputs(recipe: dict[str, Any]) -> dict[str, Any]:
    resolved = debian_rootfs.inputs(recipe)
    secure = bool(recipe.get("settings", {}).get("secure_boot", False))
    # The boot files' identity: a new shim or GRUB package rebuilds the image.
    resolved["efi_files"] = [f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" if p.is_file() else f"{p}:missing"
                             for p, _ in _needed(secure)]
    return resolved


def esp_stub_cfg() -> str:
    """The ESP's grub.cfg: find the root filesystem and read the real configuration from it (as grub-install does)."""
    return (f"# sercon: the ESP's GRUB configuration; the menu is in /boot/grub/grub.cfg on the root filesystem\n"
            f"search --no-floppy --label {ROOT_LABEL} --set root\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n")


def _mtools(esp: Path, *args: str) -> None:
    debian_rootfs.run([args[0], "-i", str(esp), *args[1:]], what=args[0])


def make_esp(esp: Path, tmp: Path, *, secure_boot: bool, log: Log) -> list[str]:
    """A FAT32 ESP image file with the boot loader; returns the files it holds."""
    with esp.open("wb") as fh:
        fh.truncate(ESP_MB * MIB)
    debian_rootfs.run(["mkfs.fat", "-F", "32", "-n", ESP_LABEL, str(esp)], what="mkfs.fat")
    for folder in ("::/EFI", "::/EFI/BOOT", f"::/{ESP_GRUB_DIR}"):
        _mtools(esp, "mmd", folder)
    files: dict[str, Path] = {}
    if secure_boot:
        # The removable-media path OVMF boots with no boot entries: shim, and the GRUB it loads
        # from its own folder. MokManager too, which shim starts when a key needs enrolling.
        files["EFI/BOOT/BOOTX64.EFI"] = SIGNED_SHIM
        files["EFI/BOOT/grubx64.efi"] = SIGNED_GRUB
        if SIGNED_MOKMANAGER.is_file():
            files["EFI/BOOT/mmx64.efi"] = SIGNED_MOKMANAGER
    else:
        image = tmp / "grubx64.efi"
        log("making the GRUB EFI image (grub-mkimage -O x86_64-efi)")
        debian_rootfs.run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(image), "-p", f"/{ESP_GRUB_DIR}",
                           *EFI_MODULES], what="grub-mkimage")
        files["EFI/BOOT/BOOTX64.EFI"] = image
    stub = tmp / "esp-grub.cfg"
    stub.write_text(esp_stub_cfg())
    files[f"{ESP_GRUB_DIR}/grub.cfg"] = stub
    for dest, src in files.items():
        _mtools(esp, "mcopy", str(src), f"::/{dest}")
    return sorted(files)


def build(recipe: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    settings = debian_rootfs.settings_of(recipe)
    secure_boot = bool(settings.get("secure_boot", False))
    for path, package in _needed(secure_boot):
        if not path.exists():
            raise ImageBuildError(f"{path} not found: apt-get install {package} (or `make setup` as root)")
    # Fail at build time, not at the first boot. "host": /usr/share/OVMF; else a Debian suite (see firmware.py).
    code, variables = find_ovmf(secure_boot, ovmf_folder(str(settings.get("ovmf", "host")), log))
    resolved = inputs(recipe)
    tarball = debian_rootfs.rootfs_tarball(recipe, resolved, log)
    with tempfile.TemporaryDirectory(prefix="sercon-build-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        rootfs, release, login = grub_disk.boot_tree(recipe, settings, resolved, tarball, tmp, log,
                                                     root_device="/dev/vda2", serial_output="serial")
        # GRUB writes to COM1 itself, and not also to `console`, which OVMF copies to COM1 as well
        # (its console is on COM1): every screen would arrive twice, in two geometries.
        grub = rootfs / "boot" / "grub"
        grub.mkdir(parents=True, exist_ok=True)
        (grub / "grub.cfg").write_text(grub_disk.grub_cfg(settings, release, root="hd0,gpt2", part_module="part_gpt",
                                                          title=recipe["name"], serial_output="serial"))
        # The ESP's mount point, as on an installed system (not mounted at boot: nothing needs it).
        (rootfs / "boot/efi").mkdir(exist_ok=True)
        with (rootfs / "etc/fstab").open("a") as fh:
            fh.write(f"LABEL={ESP_LABEL}\t/boot/efi\tvfat\tnoauto,nofail,umask=0077\t0\t0\n")

        esp = tmp / "esp.img"
        log(f"making the EFI system partition ({'signed shim + signed GRUB' if secure_boot else 'GRUB EFI'})")
        esp_files = make_esp(esp, tmp, secure_boot=secure_boot, log=log)

        used = int(debian_rootfs.run(["du", "-sxm", str(rootfs)]).split()[0])
        root_mb = used * 5 // 4 + 256
        root_start = ESP_START + ESP_MB * MIB
        total = root_start + root_mb * MIB + MIB  # the last MiB: room for GPT's backup header
        disk = out / "disk.img"
        with disk.open("wb") as fh:
            fh.truncate(total)
        log(f"partitioning a {total >> 20} MiB GPT disk (sfdisk)")
        debian_rootfs.run(["sfdisk", "-q", str(disk)], what="sfdisk", input=(
            "label: gpt\n"
            f"start={ESP_START // 512}, size={ESP_MB * MIB // 512}, type={ESP_TYPE}, name=\"EFI system partition\"\n"
            f"start={root_start // 512}, size={root_mb * MIB // 512}, type={LINUX_TYPE}, name=\"{ROOT_LABEL}\"\n"))
        with disk.open("r+b") as fh, esp.open("rb") as src:
            fh.seek(ESP_START)
            shutil.copyfileobj(src, fh, 4 * MIB)
        log(f"filling the root partition (mkfs.ext4 -E offset={root_start} -d)")
        debian_rootfs.make_ext4(rootfs, disk, label=ROOT_LABEL, offset=root_start, size_mb=root_mb)
        log(f"disk.img: {total >> 20} MiB (sparse file); ESP holds {', '.join(esp_files)}")

    wait_ms = int(settings.get("firmware_menu_wait_ms", 1000))
    return {
        "disk": "disk.img",
        "disk_format": "raw",
        "disk_snapshot": True,
        "machine": "q35",
        "firmware": str(code),
        "firmware_vars": str(variables),
        "secure_boot": secure_boot,
        # OVMF's boot manager waits this long for Esc (fw_cfg boot-menu-wait); no NIC, so no PXE ROM.
        "extra_args": ["-boot", f"menu=on,splash-time={wait_ms}"] if wait_ms > 0 else [],
        "memory_mb": int(settings.get("memory_mb", 512)),
        **login,
    }

