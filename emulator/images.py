"""Image recipes and their build cache: `resolve_image("linux-initramfs")` gives a ready GuestSpec.

A recipe is a folder `images/NAME/` with `recipe.toml` (data: builder name, packages, settings)
and whatever files its builder reads. The cache key hashes the recipe folder, the builder's source
and the builder's resolved inputs (package versions), so changing any of them rebuilds. Builds run
in a temporary folder renamed into place at the end: an interrupted build never leaves a
half-image that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import paths
from .errors import ImageBuildError, UnknownImage
from .spec import GuestSpec

DEFAULT_IMAGE = "linux-initramfs"
Log = Callable[[str], None]


@dataclass
class Image:
    name: str
    path: Path
    spec: GuestSpec


def list_recipes() -> list[str]:
    root = paths.recipes_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/recipe.toml"))


def load_recipe(name: str) -> dict[str, Any]:
    folder = paths.recipes_dir() / name
    recipe_file = folder / "recipe.toml"
    if "/" in name or name.startswith(".") or not recipe_file.is_file():
        known = ", ".join(list_recipes()) or "none"
        raise UnknownImage(
            f"unknown image {name!r}: known recipes are {known}; or give a path to a kernel or disk file"
        )
    with recipe_file.open("rb") as fh:
        recipe = tomllib.load(fh)
    recipe["name"] = name
    recipe["folder"] = folder
    recipe["downloads"] = str(paths.cache() / "downloads")
    if "builder" not in recipe:
        raise ImageBuildError(f"{recipe_file}: missing `builder = ...`")
    return recipe


def _builder(recipe: dict[str, Any]) -> Any:
    try:
        return importlib.import_module(f"emulator.builders.{recipe['builder']}")
    except ModuleNotFoundError as exc:
        raise ImageBuildError(f"recipe {recipe['name']}: no builder named {recipe['builder']!r}") from exc


def recipe_hash(recipe: dict[str, Any]) -> str:
    builder = _builder(recipe)
    digest = hashlib.sha256()
    folder: Path = recipe["folder"]
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        if f.name == "README.md":
            continue
        digest.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    digest.update(inspect.getsource(builder).encode())
    # A builder that uses other builder modules names them in HASH_ALSO, so their changes rebuild too.
    for helper in ("cpio", "kernel", "debian_packages", *getattr(builder, "HASH_ALSO", ())):
        digest.update(inspect.getsource(importlib.import_module(f"emulator.builders.{helper}")).encode())
    digest.update(json.dumps(_cached_inputs(recipe, builder, digest.hexdigest()), sort_keys=True).encode())
    if recipe.get("overrides"):
        digest.update(json.dumps(recipe["overrides"], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apt_state() -> str:
    """Changes whenever `apt-get update` brings new package lists."""
    stamps = []
    for path in ("/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin"):
        try:
            stamps.append(str(os.stat(path).st_mtime_ns))
        except OSError:
            stamps.append("-")
    return ":".join(stamps)


def _cached_inputs(recipe: dict[str, Any], builder: Any, recipe_digest: str) -> Any:
    """The builder's inputs (package versions), asked of apt only when the package lists changed.

    Resolving versions costs ~2 s of apt-cache calls; every `sercon up` and test session needs the
    cache key, so the answer is kept per recipe digest and apt state.
    """
    memo = paths.cache() / "inputs" / f"{recipe['name']}.json"
    key = f"{recipe_digest}|{_apt_state()}"
    try:
        saved = json.loads(memo.read_text())
        if saved["key"] == key:
            return saved["inputs"]
    except (OSError, ValueError, KeyError):
        pass
    inputs = builder.inputs(recipe)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"key": key, "inputs": inputs}))
    return inputs


def _stderr_log(name: str) -> Log:
    start = time.monotonic()

    def log(message: str) -> None:
        print(f"[{name} {time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def build_image(name: str, *, force: bool = False, log: Log | None = None,
                overrides: dict[str, Any] | None = None) -> Image:
    """Build (or find in the cache) the image of recipe `name`.

    `overrides` is merged into the recipe's data (nested tables merged key by key), e.g.
    `{"settings": {"getty": "masked"}}`: a variant of the recipe, cached under its own hash.
    """
    recipe = load_recipe(name)
    if overrides:
        recipe = _merge(recipe, overrides)
        recipe["overrides"] = overrides
    log = log or _stderr_log(name)
    key = recipe_hash(recipe)
    root = paths.cache() / "images"
    final = root / f"{name}-{key}"
    if final.is_dir() and (final / "image.json").is_file() and not force:
        return _load_built(name, final)
    if final.exists():
        shutil.rmtree(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}-{key}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log(f"building image {name} (recipe hash {key}) into {final}")
    started = time.monotonic()
    try:
        fields = _builder(recipe).build(recipe, tmp, log)
    except ImageBuildError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageBuildError(f"building {name} failed: {exc}") from exc
    fields["image"] = name
    (tmp / "image.json").write_text(json.dumps(fields, indent=2) + "\n")
    tmp.rename(final)
    log(f"built {name} in {time.monotonic() - started:.1f}s")
    return _load_built(name, final)


def _load_built(name: str, folder: Path) -> Image:
    fields = json.loads((folder / "image.json").read_text())
    for key in ("kernel", "initrd", "disk"):
        if fields.get(key):
            fields[key] = str(folder / fields[key])
    return Image(name=name, path=folder, spec=GuestSpec.from_dict(fields))


def resolve_image(image: str, **overrides: Any) -> GuestSpec:
    """A GuestSpec for a recipe name, a kernel file or a disk file, with field overrides applied.

    A path to an ELF or bzImage kernel becomes `kernel=`; any other file becomes `disk=`.
    """
    path = Path(image)
    if image in list_recipes():
        spec = build_image(image).spec
    elif path.is_file():
        head = path.open("rb").read(0x210)
        is_kernel = head[:4] == b"\x7fELF" or head[0x202:0x206] == b"HdrS"
        if is_kernel:
            spec = GuestSpec(kernel=str(path.resolve()))
        else:  # say the format: an overlay on it (disk_snapshot) must name its backing format
            spec = GuestSpec(disk=str(path.resolve()), disk_format="qcow2" if head[:4] == b"QFI\xfb" else "raw")
    else:
        load_recipe(image)  # raises UnknownImage with the list of recipes
        raise AssertionError("unreachable")
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "append_extra" in clean:
        extra = clean.pop("append_extra")
        clean["append"] = _insert_before_console(spec.append, extra)
    return spec.replace(**clean)


def _insert_before_console(append: str, extra: str) -> str:
    """Add kernel arguments while keeping `console=ttyS0` last (so /dev/console stays serial)."""
    words = append.split()
    consoles = [w for w in words if w.startswith("console=")]
    others = [w for w in words if not w.startswith("console=")]
    return " ".join(others + extra.split() + consoles)
