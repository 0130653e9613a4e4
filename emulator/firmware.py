"""UEFI firmware for guests: finding OVMF, and each guest's own copy of its variable store.

OVMF comes in two flash images: CODE (read-only, shared by every guest) and VARS (the NVRAM:
boot entries, Secure Boot keys). A guest must never write the packaged VARS file, so each power-on
gets a throw-away copy in the guest's folder, like the disk overlay; a snapshot keeps the copy it
was taken with (see emulator/snapshots.py), so a restored guest finds the same variables.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import SerconError

OVMF_PACKAGE = "ovmf"
OVMF_DIR = Path("/usr/share/OVMF")
#: (code, vars template) pairs from Debian's `ovmf` package, 4 MB builds first (QEMU 7.2's q35 default size).
OVMF_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))
#: Secure Boot: SMM-enforced code, and variables with Microsoft's keys enrolled (what clouds ship).
OVMF_SECBOOT_PAIRS = (("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"), ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd"))
VARS_COPY = "efivars.fd"


def find_ovmf(secure_boot: bool = False) -> tuple[Path, Path]:
    """(code, vars template) of OVMF, or a SerconError that names the package to install."""
    pairs = OVMF_SECBOOT_PAIRS if secure_boot else OVMF_PAIRS
    for code, variables in pairs:
        if (OVMF_DIR / code).is_file() and (OVMF_DIR / variables).is_file():
            return OVMF_DIR / code, OVMF_DIR / variables
    kind = "Secure Boot UEFI firmware (OVMF_CODE_4M.secboot.fd)" if secure_boot else "UEFI firmware (OVMF)"
    raise SerconError(f"{kind} not found in {OVMF_DIR}: install it with `apt-get install {OVMF_PACKAGE}` "
                      "(or `make setup` as root)")


def missing_firmware_message(path: str) -> str:
    """One line for a spec whose firmware file is missing."""
    if "ovmf" in path.lower():
        return (f"UEFI firmware {path} not found: install it with `apt-get install {OVMF_PACKAGE}` "
                "(or `make setup` as root)")
    return f"firmware file not found: {path}"


def vars_copy(template: str, folder: Path, saved: Path | None = None) -> Path:
    """A fresh writable copy of the VARS flash for one power-on, in the guest's folder.

    `saved` (a snapshot's copy) wins over the template, so a restored guest keeps its variables.
    """
    target = folder / VARS_COPY
    target.unlink(missing_ok=True)
    shutil.copyfile(saved if saved is not None and saved.is_file() else template, target)
    target.chmod(0o600)
    return target
