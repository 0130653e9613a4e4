"""`pytest --pyargs harness.readiness_suite --sercon-image PATH`, as a user runs it on a disk of
their own: the ready debian-grub disk passes every check, and the grub-no-serial variant, given
as a qcow2 copy, fails exactly `test_readiness[grub-serial]`.

Seen failing: with `test_readiness` returning before it looks at its check, the qcow2 case
exits 0 (11 passed) and fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.builders.variants import build_variant
from emulator.images import build_image

pytestmark = [pytest.mark.guest, pytest.mark.slow]


def _suite(image: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERCON_CHECK_USER": "root", "SERCON_CHECK_PASSWORD": "sercon"}
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.readiness_suite", "--sercon-image",
                           image, "--sercon-home", str(home), "-p", "no:cacheprovider", "-rA", "-q", "-s"],
                          capture_output=True, text=True, env=env, timeout=900, check=False)


def test_suite_passes_a_ready_disk(tmp_path: Path) -> None:
    disk = build_image("debian-grub").spec.disk
    assert disk
    proc = _suite(disk, tmp_path)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "11 passed" in proc.stdout or "passed" in proc.stdout.splitlines()[-1]
    assert "FAILED" not in proc.stdout


def test_suite_fails_the_grub_row_of_a_qcow2_disk(tmp_path: Path) -> None:
    raw = build_variant("grub-no-serial").spec.disk
    assert raw
    disk = tmp_path / "grub-no-serial.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, str(disk)], check=True)
    proc = _suite(str(disk), tmp_path / "home")
    print(proc.stdout[-3000:])
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "test_readiness[grub-serial]" in failed[0], proc.stdout[-3000:]
