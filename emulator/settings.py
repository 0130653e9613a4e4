"""The SERCON_* environment settings that change how owners run: one table, one parser each.

Every setting is read here and nowhere else. A value that does not parse is refused with one line
that names the setting and what it takes (`SettingError`), before anything starts:
`Machine.start` and `sercon serve` call `check()` first, because an owner or a fork server has no
terminal to say it on. Read in an owner, a value that slipped past the check counts as the
default. `sercon settings` lists them with the values in effect.

The paths (SERCON_HOME, SERCON_CACHE, SERCON_IMAGES) live in `emulator.paths`; the pytest
plugin's options have their own `--sercon-*` names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import SettingError

__all__ = ["SETTINGS", "Setting", "SettingError", "check", "choice", "number", "switch", "table", "value"]

Kind = Literal["switch", "count", "bytes", "choice"]

ON = ("1", "on", "yes", "true")
OFF = ("0", "off", "no", "false")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    default: str
    help: str
    choices: tuple[str, ...] = ()

    def takes(self) -> str:
        """What the setting takes, for an error line."""
        if self.kind == "switch":
            return "1 or 0 (also on/off, yes/no, true/false)"
        if self.kind == "count":
            return "a whole number, 0 or more"
        if self.kind == "bytes":
            return "a number of bytes, more than 0"
        return " or ".join(self.choices)

    def parse(self, raw: str) -> bool | int | str:
        """The value of `raw` (already known to be set and not empty); ValueError if it does not parse."""
        value = raw.strip().lower()
        if self.kind == "switch":
            if value in ON:
                return True
            if value in OFF:
                return False
        elif self.kind in ("count", "bytes"):
            number = int(value)
            if number > 0 or (number == 0 and self.kind == "count"):
                return number
        elif value in self.choices:
            return value
        raise ValueError(raw)


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("SERCON_ACCEL", "choice", "auto",
            "the accelerator of every guest, whatever its spec asks (auto: as the spec asks)",
            ("auto", "tcg", "kvm")),
    Setting("SERCON_FORKSERVER", "switch", "1",
            "owners are forked, warm, by a per-user fork server (0: each starts as a new Python)"),
    Setting("SERCON_RESTORE_SPARE", "switch", "1",
            "a paused QEMU loaded in the background for the next restore (spares, and standbys)"),
    Setting("SERCON_STANDBYS", "count", "2",
            "standby owners a fork server keeps, one per recent snapshot (0: none)"),
    Setting("SERCON_SERIAL_PACE", "switch", "1",
            "in an output burst, the owner reads COM1 every 5 ms instead of every few bytes"),
    Setting("SERCON_UVLOOP", "switch", "1",
            "owners and sercon serve run on uvloop's event loop (0: asyncio's own)"),
    Setting("SERCON_CLIENT_BACKLOG", "bytes", str(16 * 1024 * 1024),
            "a console client this many bytes behind is dropped (the serial log keeps every byte)"),
)}


def _raw(name: str, env: Mapping[str, str] | None) -> str:
    return (os.environ if env is None else env).get(name, "").strip()


def value(name: str, env: Mapping[str, str] | None = None) -> bool | int | str:
    """The setting's value in `env` (default: this process's environment); the default if it is
    unset, empty, or (past `check`) does not parse."""
    setting = SETTINGS[name]
    raw = _raw(name, env)
    try:
        return setting.parse(raw or setting.default)
    except ValueError:
        return setting.parse(setting.default)


def switch(name: str, env: Mapping[str, str] | None = None) -> bool:
    assert SETTINGS[name].kind == "switch"
    return bool(value(name, env))


def number(name: str, env: Mapping[str, str] | None = None) -> int:
    assert SETTINGS[name].kind in ("count", "bytes")
    result = value(name, env)
    assert isinstance(result, int)
    return result


def choice(name: str, env: Mapping[str, str] | None = None) -> str:
    assert SETTINGS[name].kind == "choice"
    return str(value(name, env))


def check(env: Mapping[str, str] | None = None) -> None:
    """Raise SettingError, one line, for the first setting in `env` whose value does not parse."""
    for setting in SETTINGS.values():
        raw = _raw(setting.name, env)
        if not raw:
            continue
        try:
            setting.parse(raw)
        except ValueError:
            raise SettingError(f"{setting.name}={raw!r} is not a value it takes: set it to {setting.takes()}, "
                               f"or unset it for the default ({setting.default})") from None


def table(env: Mapping[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(name, value in effect, where it comes from, what it does) for `sercon settings`."""
    rows = []
    for setting in SETTINGS.values():
        raw = _raw(setting.name, env)
        try:
            effective = setting.parse(raw) if raw else None
        except ValueError:
            effective = None
        if effective is None:
            source = f"default (refused: {raw!r})" if raw else "default"
            effective = setting.parse(setting.default)
        else:
            source = "environment"
        shown = ("on" if effective else "off") if isinstance(effective, bool) else str(effective)
        rows.append((setting.name, shown, source, setting.help))
    return rows
