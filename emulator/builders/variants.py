"""Variants of sercon's recipes that look like images other people build (images/variants.toml).

`build_variant("hostname-none")` builds (or finds in the cache) the recipe `base` with the
variant's settings merged in; `variants()` lists them with what `sercon check` must say of each.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from .. import paths
from ..errors import UnknownImage
from ..images import Image, build_image


@dataclass
class Variant:
    name: str
    base: str
    settings: dict[str, Any]
    ready: bool = False
    fails: str | None = None
    #: What the offline phase alone says of the `fails` row ("fail", or "skip" where only the live boot can tell).
    offline: str = "fail"
    login: dict[str, str] = field(default_factory=dict)


def variants() -> dict[str, Variant]:
    with (paths.recipes_dir() / "variants.toml").open("rb") as fh:
        data = tomllib.load(fh)
    defaults = data.get("defaults", {})
    out = {}
    for name, item in data.get("variants", {}).items():
        settings = {**defaults.get(item["base"], {}), **item.get("settings", {})}
        out[name] = Variant(name=name, base=item["base"], settings=settings, ready=bool(item.get("ready")),
                            fails=item.get("fails"), offline=item.get("offline", "fail"),
                            login=dict(item.get("login", {})))
    return out


def build_variant(name: str) -> Image:
    known = variants()
    if name not in known:
        raise UnknownImage(f"unknown variant {name!r}: known are {', '.join(sorted(known))}")
    variant = known[name]
    if not variant.settings:
        return build_image(variant.base)
    return build_image(variant.base, overrides={"settings": variant.settings})
