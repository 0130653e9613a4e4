"""Where sercon keeps things: running guests (state) and built images (cache).

- `$SERCON_HOME` (default `~/.local/state/sercon`): one folder per guest under `guests/`, holding
  its sockets, serial log, event log and owner log.
- `$SERCON_CACHE` (default `~/.cache/sercon`): built images, the accelerator verdict, downloads.
- `$SERCON_IMAGES` (default: the `images/` folder of this checkout): the recipes.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("SERCON_HOME")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sercon"


def guests_dir() -> Path:
    return home() / "guests"


def guest_dir(name: str) -> Path:
    return guests_dir() / name


def cache() -> Path:
    env = os.environ.get("SERCON_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sercon"


def recipes_dir() -> Path:
    env = os.environ.get("SERCON_IMAGES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "images"
