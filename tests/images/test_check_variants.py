"""`sercon check` on every variant of images/variants.toml: READY for the ready ones, and exactly
the right failed row for each broken one, offline (from the files alone) and after the live boot.
Each verdict's time is printed (`-s` shows it); it is measured, not asserted.

Seen failing: with `getty_offline` returning None, the offline getty rows of no-getty and
getty-on-ttyS1 are skip instead of fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.builders.variants import build_variant, variants
from harness.readiness import check_image

pytestmark = [pytest.mark.guest, pytest.mark.slow]

VARIANTS = variants()
READY = [name for name, v in VARIANTS.items() if v.ready]
BROKEN = [name for name, v in VARIANTS.items() if v.fails]


def _credentials(name: str) -> tuple[str, str | None]:
    spec = build_variant(name).spec
    login = VARIANTS[name].login
    return login.get("user", spec.user or "root"), login.get("password", spec.password)


@pytest.mark.parametrize("name", READY)
def test_ready_variant_is_ready(sercon_home: Path, name: str) -> None:
    spec = build_variant(name).spec
    user, password = _credentials(name)
    report = check_image(spec, user, password, label=name)
    print(f"\n{name}: verdict in {report.seconds:.1f} s")
    assert report.ok, report.table()
    assert report.get("getty").status == "pass"
    assert report.get("sysrq-serial").status == "pass"


@pytest.mark.parametrize("name", BROKEN)
def test_broken_variant_fails_the_right_row(sercon_home: Path, name: str) -> None:
    variant = VARIANTS[name]
    spec = build_variant(name).spec
    user, password = _credentials(name)

    offline = check_image(spec, user, password, label=name, offline_only=True)
    assert offline.get(variant.fails or "").status == variant.offline, offline.table()
    assert [c.id for c in offline.checks if c.status == "fail" and c.id != variant.fails] == [], offline.table()

    report = check_image(spec, user, password, label=name)
    print(f"\n{name}: verdict in {report.seconds:.1f} s")
    failed = [c.id for c in report.checks if c.status == "fail"]
    assert failed == [variant.fails], report.table()
    assert report.get(variant.fails or "").fix
