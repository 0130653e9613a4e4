"""What an owner decides inline on its way to QEMU (no thread hop, no subprocess), and when it must
still ask: a restore waits for every step here.

Broken on purpose once: `known_qemu_version` keyed on the path alone (no size or mtime) made
`test_a_changed_qemu_binary_is_asked_again` fail; `known_choice` returning the cached verdict
without its host key made `test_a_cached_verdict_counts_only_for_the_same_qemu` fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from emulator import accel, forkserver, snapshots


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SERCON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SERCON_ACCEL", raising=False)
    monkeypatch.setattr(snapshots, "_QEMU_VERSIONS", {})  # this process's memo: start empty
    return tmp_path / "cache"


def fake_qemu(path: Path, version: str) -> str:
    path.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version}'\n")
    path.chmod(0o755)
    return str(path)


def test_a_qemu_version_is_known_after_one_ask_even_in_a_new_process(cache: Path, tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path / "qemu", "7.2.0")
    assert snapshots.known_qemu_version(qemu) is None  # never asked: only `qemu --version` can tell
    line = snapshots.qemu_version(qemu)
    assert line.startswith("QEMU emulator version 7.2.0 (")
    snapshots._QEMU_VERSIONS.clear()  # as an owner forked before the ask: only the cache file knows
    assert snapshots.known_qemu_version(qemu) == line


def test_a_changed_qemu_binary_is_asked_again(cache: Path, tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path / "qemu", "7.2.0")
    snapshots.qemu_version(qemu)
    fake_qemu(tmp_path / "qemu", "8.0.10")  # an upgrade in place: another size
    os.utime(qemu, ns=(1, 1))
    assert snapshots.known_qemu_version(qemu) is None
    assert "8.0.10" in snapshots.qemu_version(qemu)


def test_an_accelerator_asked_for_needs_no_probe(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert accel.known_choice("tcg", "/usr/bin/qemu-system-x86_64") == ("tcg", "requested accel=tcg")
    monkeypatch.setenv("SERCON_ACCEL", "kvm")
    assert accel.known_choice("tcg", "/usr/bin/qemu-system-x86_64")[0] == "kvm"  # type: ignore[index]


def test_a_cached_verdict_counts_only_for_the_same_qemu(cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_accessible", lambda: True)  # as on a host with a /dev/kvm
    qemu = fake_qemu(tmp_path / "qemu", "7.2.0")
    assert accel.known_choice("auto", qemu) is None  # nothing cached: a probe must tell
    cache.mkdir(parents=True)
    (cache / "accel.json").write_text(json.dumps({"key": accel._host_key(qemu), "accel": "tcg", "reason": "stalls"}))
    assert accel.known_choice("auto", qemu) == ("tcg", "cached probe verdict: stalls")
    other = fake_qemu(tmp_path / "qemu-other", "8.0.0")
    assert accel.known_choice("auto", other) is None


def test_the_fork_server_key_covers_every_source_file_but_the_web_clients() -> None:
    found = set(forkserver._sources())
    expected = {p for p in forkserver.PACKAGE.rglob("*.py") if "node_modules" not in p.parts}
    assert found == expected
    assert forkserver.PACKAGE / "daemon.py" in found
