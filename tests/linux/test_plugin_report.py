"""The plugin's end-of-session console-path report, with and without pytest-xdist workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

TESTS = '''
def test_a(fresh_shell):
    assert fresh_shell.run("echo a").output == "a\\n"

def test_b(fresh_shell):
    assert fresh_shell.run("echo b").output == "b\\n"
'''


def test_the_report_lists_every_workers_guests(tmp_path: Path, sercon_home: Path) -> None:
    """Under `-n 2` each worker boots its own guest; the controller's report names both. Without
    the workers handing their report over (workeroutput), the section was missing altogether."""
    (tmp_path / "test_two.py").write_text(TESTS)
    env = dict(os.environ, SERCON_HOME=str(sercon_home / "xdist-report"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider",
                           str(tmp_path / "test_two.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = done.stdout.split("sercon console-path report", 1)[-1]
    assert "sercon console-path report" in done.stdout
    assert "worker gw0: guests: 1" in report and "worker gw1: guests: 1" in report
    assert " a-1 " in report and " b-1 " in report and "boots=1" in report
