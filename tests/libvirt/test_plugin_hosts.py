"""`--sercon-host` with xdist: worker gwK takes host K modulo their number, so a suite run with two
hosts and four workers puts two workers' share on each. Seen to fail with every worker on the first
host (the worker index ignored)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOSTS = ["qemu:///system", "qemu+ssh://root@lab1.invalid/system"]


def test_xdist_workers_are_spread_over_the_hosts(tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    (tmp_path / "test_where.py").write_text(
        "import os\n"
        "def test_where(sercon_host):\n"
        f"    with open({str(seen)!r}, 'a') as fh:\n"
        "        fh.write(os.environ['PYTEST_XDIST_WORKER'] + ' ' + sercon_host + '\\n')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "4", "--dist=each",
         *[arg for host in HOSTS for arg in ("--sercon-host", host)], str(tmp_path / "test_where.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    placed = dict(line.split(" ", 1) for line in seen.read_text().splitlines())
    assert placed == {f"gw{k}": HOSTS[k % 2] for k in range(4)}


def test_a_bad_host_uri_stops_the_session_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "test_any.py").write_text("def test_any(sercon_host):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--sercon-host",
                             "esx://vcenter/system", str(tmp_path / "test_any.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0 and "unknown libvirt URI scheme 'esx'" in result.stdout
