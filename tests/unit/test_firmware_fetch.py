"""Debian's OVMF fetched for the UEFI images: from the real archive, and refused when tampered with.

The tampering tests serve a local copy of the archive (the real, signed InRelease and package
index from deb.debian.org) over HTTP, with one thing changed: the .deb, or the signed text.

Seen failing: with the SHA256 check of the .deb removed (the tampered package was unpacked), and
with gpgv's verdict ignored (an altered InRelease was read).
"""

from __future__ import annotations

import functools
import http.server
import lzma
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import firmware
from emulator.errors import SerconError

pytestmark = pytest.mark.slow

SUITE = "trixie"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SERCON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SERCON_DEBIAN_MIRROR", raising=False)
    return tmp_path / "cache"


def test_the_suites_ovmf_is_fetched_once_and_has_both_pairs(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    folder = firmware.debian_ovmf(SUITE, lines.append)
    assert folder == cache / "firmware" / f"ovmf-{SUITE}"
    assert (folder / "VERSION").read_text().startswith(f"ovmf {lines[0].split()[3]} from Debian {SUITE}")
    code, variables = firmware.find_ovmf(False, folder)
    assert (code.name, variables.name) == ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
    code, variables = firmware.find_ovmf(True, folder)
    assert (code.name, variables.name) == ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
    assert code.stat().st_size > 2 << 20  # a 4 MB flash build, not a stub
    # A second call uses the cache: a mirror that cannot answer changes nothing.
    monkeypatch.setenv("SERCON_DEBIAN_MIRROR", "http://127.0.0.1:9")
    assert firmware.debian_ovmf(SUITE) == folder


class _Mirror:
    """A copy of the parts of the Debian archive that debian_ovmf reads, served on localhost."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debian"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def path(self, relative: str) -> Path:
        target = self.root / "debian" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Mirror]:
    """The real InRelease, package index and .deb, copied from deb.debian.org into a local mirror."""
    upstream = firmware.DEBIAN_MIRROR
    local = _Mirror(tmp_path / "www")
    release_text = urllib.request.urlopen(f"{upstream}/dists/{SUITE}/InRelease", timeout=60).read()
    local.path(f"dists/{SUITE}/InRelease").write_bytes(release_text)
    lines = release_text.decode().splitlines()
    arch = "amd64"
    start = lines.index("SHA256:")
    digest = next(line.split()[0] for line in lines[start + 1:]
                  if line.startswith(" ") and line.split()[2] == f"main/binary-{arch}/Packages.xz")
    index_dir = f"dists/{SUITE}/main/binary-{arch}"
    try:
        packed = urllib.request.urlopen(f"{upstream}/{index_dir}/by-hash/SHA256/{digest}", timeout=60).read()
    except OSError:
        packed = urllib.request.urlopen(f"{upstream}/{index_dir}/Packages.xz", timeout=60).read()
    local.path(f"{index_dir}/by-hash/SHA256/{digest}").write_bytes(packed)
    fields = firmware._stanza(lzma.decompress(packed).decode(), "ovmf")
    deb = urllib.request.urlopen(f"{upstream}/{fields['Filename']}", timeout=120).read()
    local.path(fields["Filename"]).write_bytes(deb)
    monkeypatch.setenv("SERCON_DEBIAN_MIRROR", local.url)
    yield local
    local.server.shutdown()


def test_the_local_copy_of_the_archive_is_accepted(mirror: _Mirror, cache: Path) -> None:
    """The control for the two below: unchanged, the local copy gives the firmware."""
    folder = firmware.debian_ovmf(SUITE)
    assert mirror.url in (folder / "VERSION").read_text()


def test_a_tampered_package_is_refused(mirror: _Mirror, cache: Path) -> None:
    deb = next((mirror.root / "debian" / "pool").rglob("ovmf_*.deb"))
    data = bytearray(deb.read_bytes())
    data[len(data) // 2] ^= 0xFF
    deb.write_bytes(bytes(data))
    with pytest.raises(SerconError, match=r"does not match its SHA256 in the signed index") as info:
        firmware.debian_ovmf(SUITE)
    assert "\n" not in str(info.value) and "SERCON_DEBIAN_MIRROR" in str(info.value)
    assert not (cache / "firmware" / f"ovmf-{SUITE}").exists()


def test_a_release_file_whose_signature_fails_is_refused(mirror: _Mirror, cache: Path) -> None:
    release = mirror.path(f"dists/{SUITE}/InRelease")
    release.write_bytes(release.read_bytes().replace(b"Suite: ", b"Suite:  ", 1))
    with pytest.raises(SerconError, match=r"could not fetch Debian trixie's ovmf .*BAD signature"):
        firmware.debian_ovmf(SUITE)
    assert not (cache / "firmware" / f"ovmf-{SUITE}").exists()
