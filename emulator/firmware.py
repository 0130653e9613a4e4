"""UEFI firmware for guests: finding OVMF, and each guest's own copy of its variable store.

OVMF comes in two flash images: CODE (read-only, shared by every guest) and VARS (the NVRAM:
boot entries, Secure Boot keys). A guest must never write the packaged VARS file, so each power-on
gets a throw-away copy in the guest's folder, like the disk overlay; a snapshot keeps the copy it
was taken with (see emulator/snapshots.py), so a restored guest finds the same variables.

Where OVMF comes from: the host's `ovmf` package (`/usr/share/OVMF`), or, for the images sercon
builds, Debian's `ovmf` package of a named suite, fetched into `$SERCON_CACHE/firmware/` and
checked against the suite's signed InRelease (`debian_ovmf`). The reason: Debian 12's OVMF (edk2
2022.11) sends the timer interrupt's end-of-interrupt only after the callbacks the tick runs, so
a callback that waits for time waits forever (edk2 bug 4162, fixed in edk2-stable202302). Under
TCG on a busy host it happens within a few resets: the firmware or GRUB stops, the local APIC
shows the timer vector in service for good, and the console stays silent until the guest is
powered off. Debian 13's OVMF has the fix.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import paths
from .errors import SerconError

OVMF_PACKAGE = "ovmf"
OVMF_DIR = Path("/usr/share/OVMF")
#: (code, vars template) pairs from Debian's `ovmf` package, 4 MB builds first (QEMU 7.2's q35 default size).
OVMF_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))
#: Secure Boot: SMM-enforced code, and variables with Microsoft's keys enrolled (what clouds ship).
OVMF_SECBOOT_PAIRS = (("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"), ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd"))
VARS_COPY = "efivars.fd"


#: The Debian archive `debian_ovmf` fetches from, and the keys its InRelease is checked with.
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
FETCH_TIMEOUT_S = 120


def find_ovmf(secure_boot: bool = False, folder: Path | None = None) -> tuple[Path, Path]:
    """(code, vars template) of OVMF in `folder` (default: the host's), or a SerconError that says what to install."""
    folder = folder or OVMF_DIR
    pairs = OVMF_SECBOOT_PAIRS if secure_boot else OVMF_PAIRS
    for code, variables in pairs:
        if (folder / code).is_file() and (folder / variables).is_file():
            return folder / code, folder / variables
    kind = "Secure Boot UEFI firmware (OVMF_CODE_4M.secboot.fd)" if secure_boot else "UEFI firmware (OVMF)"
    raise SerconError(f"{kind} not found in {folder}: install it with `apt-get install {OVMF_PACKAGE}` "
                      "(or `make setup` as root)")


def ovmf_folder(source: str, log: Callable[[str], None] | None = None) -> Path:
    """The folder of OVMF's flash images for an image's `ovmf` setting: "host" or a Debian suite ("trixie")."""
    return OVMF_DIR if source == "host" else debian_ovmf(source, log)


def debian_ovmf(suite: str, log: Callable[[str], None] | None = None) -> Path:
    """Debian's `ovmf` package of `suite`, unpacked once into `$SERCON_CACHE/firmware/ovmf-SUITE/`.

    Every download is checked: InRelease's signature with the host's Debian archive keyring, the
    package index against InRelease's SHA256, the .deb against the index's SHA256. A later call
    reuses the folder (delete it to fetch the suite's current package)."""
    folder = paths.cache() / "firmware" / f"ovmf-{suite}"
    if (folder / "VERSION").is_file():
        return folder
    mirror = os.environ.get("SERCON_DEBIAN_MIRROR", DEBIAN_MIRROR).rstrip("/")
    say = log or (lambda _line: None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Staged beside its final place, so that the last step is one rename on the same filesystem.
        with tempfile.TemporaryDirectory(prefix=f".ovmf-{suite}-", dir=folder.parent) as tmp_name:
            tmp = Path(tmp_name)
            release = _verified_release(f"{mirror}/dists/{suite}/InRelease", tmp)
            # The host architecture's index (it lists `Architecture: all` packages too), by hash as apt
            # fetches it: a mirror or proxy may serve a newer or older Packages.xz than its InRelease.
            arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                                  text=True).stdout.strip()
            index_dir = f"{mirror}/dists/{suite}/main/binary-{arch}"
            index_sha256 = _release_sha256(release, f"main/binary-{arch}/Packages.xz")
            try:
                packed = _fetch(f"{index_dir}/by-hash/SHA256/{index_sha256}", index_sha256)
            except OSError:
                packed = _fetch(f"{index_dir}/Packages.xz", index_sha256)
            index = lzma.decompress(packed)
            fields = _stanza(index.decode("utf-8", "replace"), OVMF_PACKAGE)
            say(f"fetching OVMF: {OVMF_PACKAGE} {fields['Version']} from Debian {suite} ({mirror})")
            deb = tmp / "ovmf.deb"
            deb.write_bytes(_fetch(f"{mirror}/{fields['Filename']}", fields["SHA256"]))
            unpacked = tmp / "root"
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True)
            staged = tmp / "OVMF"
            shutil.copytree(unpacked / "usr/share/OVMF", staged, symlinks=True)
            (staged / "VERSION").write_text(f"{OVMF_PACKAGE} {fields['Version']} from Debian {suite} ({mirror})\n")
            shutil.rmtree(folder, ignore_errors=True)
            staged.rename(folder)
    except (OSError, subprocess.CalledProcessError, lzma.LZMAError, KeyError) as exc:
        detail: object = exc
        if isinstance(exc, subprocess.CalledProcessError):  # gpgv or dpkg-deb: its last line says why
            detail = (exc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {exc.returncode}"])[-1]
        raise SerconError(f"could not fetch Debian {suite}'s {OVMF_PACKAGE} from {mirror} ({detail}): check the "
                          "network or SERCON_DEBIAN_MIRROR, or set ovmf = \"host\" in the recipe") from None
    return folder


def _fetch(url: str, sha256: str | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        data: bytes = response.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise OSError(f"{url} does not match its SHA256 in the signed index")
    return data


def _verified_release(url: str, tmp: Path) -> str:
    """The text of a suite's InRelease, once gpgv has checked its signature."""
    signed, verified = tmp / "InRelease", tmp / "Release"
    signed.write_bytes(_fetch(url))
    subprocess.run(["gpgv", "--keyring", str(DEBIAN_KEYRING), "--output", str(verified), str(signed)],
                   check=True, capture_output=True)
    return verified.read_text()


def _release_sha256(release: str, path: str) -> str:
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
        elif in_sha256 and line.split()[2:] == [path]:
            return line.split()[0]
    raise KeyError(f"{path} is not in the suite's InRelease")


def _stanza(index: str, package: str) -> dict[str, str]:
    for stanza in index.split("\n\n"):
        if stanza.startswith(f"Package: {package}\n"):
            return dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
    raise KeyError(f"{package} is not in the suite's package index")


def missing_firmware_message(path: str) -> str:
    """One line for a spec whose firmware file is missing."""
    if "ovmf" in path.lower():
        return (f"UEFI firmware {path} not found: install it with `apt-get install {OVMF_PACKAGE}` "
                "(or `make setup` as root)")
    return f"firmware file not found: {path}"


def vars_copy(template: str, folder: Path, saved: Path | None = None, name: str = VARS_COPY) -> Path:
    """A fresh writable copy of the VARS flash for one power-on, in the guest's folder.

    `saved` (a snapshot's copy) wins over the template, so a restored guest keeps its variables.
    """
    target = folder / name
    target.unlink(missing_ok=True)
    shutil.copyfile(saved if saved is not None and saved.is_file() else template, target)
    target.chmod(0o600)
    return target
