"""Builder for kernel + busybox initramfs guests (`builder = "initramfs"`), such as linux-initramfs.

Inputs: a Debian kernel package and busybox-static, both downloaded with apt and unpacked; the
recipe folder's `rcS` and `inittab`. Settings for variants (guests as other people build them):
`hostname` ("" for none: `(none) login:`), `password` ("" for none), `issue`, `motd`, `profile`
(appended to /etc/profile: PS1 and the like), `getty` (inittab lines replacing the serial
gettys; "" for none), `files` ({path: text}, executable when it starts with `#!`). Optionally
`programs` (in `[settings]`): C sources in the recipe folder, each compiled with the host's
`gcc -static -O2` into `/bin/NAME` (the sac-sim image's SAC simulator).
Output: `vmlinux` (or `bzImage`) and `initramfs.cpio`.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ImageBuildError
from . import debian_packages
from .cpio import CpioWriter
from .kernel import install_kernel

Log = Callable[[str], None]


def inputs(recipe: dict[str, Any]) -> dict[str, str]:
    packages = recipe.get("packages", {})
    resolved = {}
    for role in ("kernel", "busybox"):
        name = packages.get(role)
        if not name:
            raise ImageBuildError(f"recipe {recipe['name']}: [packages] needs `{role}`")
        real, version = debian_packages.resolve(name)
        resolved[role] = f"{real}={version}"
    return resolved


def hash_password(password: str) -> str:
    """SHA-512 crypt hash (`$6$...`), as /etc/shadow wants; made by openssl, present on every Debian."""
    try:
        proc = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise ImageBuildError("hashing the guest password needs openssl: apt-get install openssl") from exc
    return proc.stdout.strip()


def build(recipe: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    settings = recipe.get("settings", {})
    folder: Path = recipe["folder"]
    resolved = inputs(recipe)
    downloads = Path(recipe["downloads"])
    with tempfile.TemporaryDirectory(prefix="sercon-build-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {}
        for role, pinned in resolved.items():
            name, version = pinned.split("=", 1)
            log(f"downloading {name} {version}")
            deb = debian_packages.download(name, version, downloads)
            log(f"unpacking {deb.name}")
            trees[role] = debian_packages.extract(deb, tmp / role)

        kernel_tree, busybox = trees["kernel"], trees["busybox"] / "bin" / "busybox"
        vmlinuz = next(iter(sorted((kernel_tree / "boot").glob("vmlinuz-*"))), None)
        if vmlinuz is None or not busybox.is_file():
            raise ImageBuildError("the kernel or busybox package did not contain the expected files")
        release = vmlinuz.name.removeprefix("vmlinuz-")
        kernel_file = install_kernel(vmlinuz, out, settings.get("boot", "pvh"), recipe["name"], log)

        log("writing the initramfs")
        modules_dir = kernel_tree / "lib" / "modules" / release
        blob = io.BytesIO()
        cpio = CpioWriter(blob)
        add_busybox_base(cpio, busybox, ("etc/init.d", "etc/acpi", "etc/acpi/PWRF", "root", "run", "var", "var/log"))
        cpio.symlink("init", "/bin/busybox")

        module_names = []
        for mod in settings.get("modules", []):
            found = sorted(modules_dir.rglob(f"{mod}.ko"))
            if not found:
                raise ImageBuildError(f"kernel module {mod}.ko not found in {release}")
            cpio.file(f"lib/modules/{mod}.ko", found[0].read_bytes())
            module_names.append(mod)

        user = settings.get("user", "root")
        password = settings.get("password", "sercon")
        hostname = settings.get("hostname", "sercon")
        pw_hash = hash_password(password) if password else ""  # "": no password, login asks none
        home = "/root" if user == "root" else f"/home/{user}"
        passwd = "root:x:0:0:root:/root:/bin/sh\n"
        shadow = f"root:{pw_hash if user == 'root' else '*'}:19000:0:99999:7:::\n"
        if user != "root":
            cpio.directory(home.lstrip("/"))
            passwd += f"{user}:x:1000:1000:{user}:{home}:/bin/sh\n"
            shadow += f"{user}:{pw_hash}:19000:0:99999:7:::\n"
        cpio.file("etc/passwd", passwd.encode())
        cpio.file("etc/shadow", shadow.encode(), 0o600)
        cpio.file("etc/group", b"root:x:0:\n" + (f"{user}:x:1000:\n".encode() if user != "root" else b""))
        if hostname:  # "": none set, the kernel's "(none)" stays (rcS skips an empty /etc/hostname)
            cpio.file("etc/hostname", f"{hostname}\n".encode())
        cpio.file("etc/sysrq", f"{int(settings.get('sysrq', 1))}\n".encode())
        cpio.file("etc/modules", ("\n".join(module_names) + "\n").encode())
        cpio.file("etc/issue", str(settings.get("issue", "sercon guest \\n on \\l\n\n")).encode())
        if settings.get("motd"):
            cpio.file("etc/motd", str(settings["motd"]).encode())
        profile = "export PATH=/bin:/sbin:/usr/bin:/usr/sbin\n" + str(settings.get("profile", ""))
        cpio.file("etc/profile", profile.encode())
        cpio.file("etc/inittab", inittab((folder / "inittab").read_text(), settings.get("getty")).encode())
        for rel, text in sorted(settings.get("files", {}).items()):
            cpio.file(rel.lstrip("/"), str(text).encode(), 0o755 if str(text).startswith("#!") else 0o644)
        cpio.file("etc/init.d/rcS", (folder / "rcS").read_bytes(), 0o755)
        cpio.file("etc/acpi/PWRF/00000080", b"#!/bin/sh\npoweroff\n", 0o755)
        for source in settings.get("programs", []):
            log(f"compiling {source} (gcc -static)")
            cpio.file(f"bin/{Path(source).stem}", compile_static(folder / source, tmp), 0o755)
        cpio.close()
        (out / "initramfs.cpio").write_bytes(blob.getvalue())

    return {
        "kernel": kernel_file,
        "initrd": "initramfs.cpio",
        "append": settings.get("append", "console=ttyS0"),
        "memory_mb": int(settings.get("memory_mb", 512)),
        "user": user,
        "password": password,
    }


def inittab(text: str, getty: str | None) -> str:
    """The recipe's inittab with its serial getty lines (`ttyS*::`) replaced by `getty` (None: kept).

    `getty` is one or more inittab lines, e.g. `ttyS0::respawn:/sbin/getty -L 9600 ttyS0 vt220`;
    "" leaves the serial ports without a getty.
    """
    if getty is None:
        return text
    kept = [line for line in text.splitlines() if not line.startswith("ttyS")]
    return "\n".join(kept[:1] + [line for line in getty.splitlines() if line.strip()] + kept[1:]) + "\n"


def compile_static(source: Path, tmp: Path) -> bytes:
    """A static x86-64 executable built from one C file with the host's gcc."""
    if not source.is_file():
        raise ImageBuildError(f"program source not found: {source}")
    exe = tmp / f"{source.stem}.bin"
    try:
        proc = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(exe), str(source)],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"compiling {source.name} needs gcc: apt-get install gcc libc6-dev") from exc
    if proc.returncode != 0:
        raise ImageBuildError(f"gcc failed on {source.name} (is libc6-dev installed?):\n{proc.stderr[-2000:]}")
    return exe.read_bytes()


BASE_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "lib", "lib/modules")


def add_busybox_base(cpio: CpioWriter, busybox: Path, extra_dirs: tuple[str, ...] = ()) -> None:
    """The skeleton every busybox initramfs starts from: folders, console and null, busybox and its applets."""
    for d in BASE_DIRS + extra_dirs:
        cpio.directory(d, 0o1777 if d == "tmp" else 0o755)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _applets(busybox):
        if applet != "bin/busybox":  # busybox lists itself
            cpio.symlink(applet, "/bin/busybox")


def _applets(busybox: Path) -> list[str]:
    """Install paths of every applet (`/bin/sh`, `/sbin/getty`, ...), as `busybox --list-full` says."""
    proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ImageBuildError("busybox --list-full failed; is this an x86-64 host?")
    return [line.strip().lstrip("/") for line in proc.stdout.splitlines() if line.strip()]
