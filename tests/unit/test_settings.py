"""The SERCON_* settings (emulator/settings.py): every value a user may write means what it says,
and a value that means nothing is refused with one line before any owner starts.

Broken on purpose once: `check` skipping count settings let `SERCON_STANDBYS=abc` through, and
`test_sercon_up_refuses_a_bad_setting_before_anything_starts` failed (a fork server then took the
value as 2 without a word, as it did before this module).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emulator import settings
from emulator.settings import SETTINGS, SettingError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("raw", ["1", "on", "YES", "true", " True "])
def test_a_switch_is_on_in_each_spelling(raw: str) -> None:
    assert settings.switch("SERCON_UVLOOP", {"SERCON_UVLOOP": raw}) is True


@pytest.mark.parametrize("raw", ["0", "off", "No", "false"])
def test_a_switch_is_off_in_each_spelling(raw: str) -> None:
    # Before this module, only "0" turned a switch off: "false" left the fork server on.
    assert settings.switch("SERCON_FORKSERVER", {"SERCON_FORKSERVER": raw}) is False


def test_unset_or_empty_is_the_default() -> None:
    for setting in SETTINGS.values():
        for env in ({}, {setting.name: ""}, {setting.name: "  "}):
            assert settings.value(setting.name, env) == setting.parse(setting.default)
    assert settings.number("SERCON_STANDBYS", {}) == 2


@pytest.mark.parametrize(("name", "raw"), [
    ("SERCON_STANDBYS", "abc"), ("SERCON_STANDBYS", "-1"), ("SERCON_STANDBYS", "2.5"),
    ("SERCON_CLIENT_BACKLOG", "0"), ("SERCON_CLIENT_BACKLOG", "16M"),
    ("SERCON_UVLOOP", "maybe"), ("SERCON_FORKSERVER", "2"), ("SERCON_ACCEL", "hvf"),
])
def test_a_value_that_means_nothing_is_refused_in_one_line(name: str, raw: str) -> None:
    with pytest.raises(SettingError) as caught:
        settings.check({name: raw})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={raw!r} is not a value it takes: set it to {SETTINGS[name].takes()}")
    assert f"default ({SETTINGS[name].default})" in message


def test_good_values_pass_the_check() -> None:
    settings.check({"SERCON_STANDBYS": "0", "SERCON_CLIENT_BACKLOG": "131072", "SERCON_ACCEL": "TCG",
                    "SERCON_UVLOOP": "off", "SERCON_RESTORE_SPARE": "0", "UNRELATED": "x"})
    assert settings.number("SERCON_STANDBYS", {"SERCON_STANDBYS": "0"}) == 0
    assert settings.choice("SERCON_ACCEL", {"SERCON_ACCEL": "TCG"}) == "tcg"


def test_sercon_up_refuses_a_bad_setting_before_anything_starts(tmp_path: Path) -> None:
    env = dict(os.environ, SERCON_HOME=str(tmp_path / "home"), SERCON_STANDBYS="abc",
               PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run([sys.executable, "-m", "emulator.cli", "up", "--name", "never"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and "SERCON_STANDBYS='abc'" in proc.stderr
        assert not (tmp_path / "home" / "guests" / "never").exists()
        assert not (tmp_path / "home" / "forkserver").exists()
    finally:  # refused or not, nothing is left running (a deleted home ends a fork server)
        subprocess.run([sys.executable, "-m", "emulator.cli", "down", "--all"], env=env, capture_output=True,
                       timeout=120)
        shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_sercon_settings_lists_what_is_in_effect() -> None:
    env = dict(os.environ, SERCON_UVLOOP="off", SERCON_STANDBYS="x", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "emulator.cli", "settings"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("SERCON_")}
    assert set(rows) == set(SETTINGS)
    assert rows["SERCON_UVLOOP"][:2] == ["off", "environment"]
    assert rows["SERCON_STANDBYS"][:3] == ["2", "default", "(refused:"]


def test_every_setting_is_read_through_the_table_and_documented() -> None:
    """The table is the one place: no module reads one of its variables from the environment itself."""
    readme = (ROOT / "README.md").read_text()
    pattern = re.compile(r"environ(?:\.get\(|\[)\s*[\"'](SERCON_\w+)")
    for path in (ROOT / "emulator").rglob("*.py"):
        if path.name == "settings.py" or "node_modules" in path.parts:
            continue
        read_here = set(pattern.findall(path.read_text())) & set(SETTINGS)
        assert not read_here, f"{path.relative_to(ROOT)} reads {sorted(read_here)} itself"
    for name in SETTINGS:
        assert name in readme, f"{name} is not in the README"
