"""Fetching Debian packages by name with the host's apt, and unpacking them without installing.

`apt-get download` needs no root; it does need package lists (`apt-get update`), which we say.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..errors import ImageBuildError


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{args[0]} not found: image builds need a Debian host with apt and dpkg") from exc
    if proc.returncode != 0:
        raise ImageBuildError(f"`{' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def candidate_version(package: str) -> str:
    out = _run(["apt-cache", "policy", package])
    match = re.search(r"Candidate:\s*(\S+)", out)
    if not match or match.group(1) == "(none)":
        raise ImageBuildError(
            f"Debian package {package} is not known to apt here: run `apt-get update` (as root) and retry"
        )
    return match.group(1)


def resolve(package: str) -> tuple[str, str]:
    """(real package, version) for a package name, following a kernel metapackage to its versioned image.

    `linux-image-amd64` is an empty metapackage; the kernel lives in `linux-image-6.1.0-N-amd64`.
    """
    version = candidate_version(package)
    if package.startswith("linux-image-") and not re.search(r"\d+\.\d+", package):
        out = _run(["apt-cache", "depends", f"{package}={version}"])
        match = re.search(r"Depends:\s*(linux-image-\d\S*)", out)
        if not match:
            raise ImageBuildError(f"cannot find the kernel package behind {package}:\n{out}")
        real = match.group(1)
        return real, candidate_version(real)
    return package, version


def download(package: str, version: str, dest: Path) -> Path:
    """Download one .deb into dest (reused when already there) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    existing = sorted(dest.glob(pattern))
    if existing:
        return existing[0]
    _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dest)
    found = sorted(dest.glob(pattern))
    if not found:
        raise ImageBuildError(f"apt-get download {package}={version} left no .deb in {dest}")
    return found[0]


def extract(deb: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return dest
