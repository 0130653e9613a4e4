"""The readiness checks of `sercon check` as a pytest module, to run on your own image:

    pytest --pyargs harness.readiness_suite --sercon-image my-disk.qcow2
    SERCON_CHECK_USER=admin SERCON_CHECK_PASSWORD=secret pytest --pyargs harness.readiness_suite \\
        --sercon-image my-disk.qcow2

The image boots once (in a guest of its own, never writing to your file); each requirement is one
test: a failed check fails its test with the fix in the message, a warning is a pytest warning,
a check that does not apply (GRUB on a `-kernel` boot) is skipped. Credentials come from the
recipe, or `SERCON_CHECK_USER` / `SERCON_CHECK_PASSWORD` (default user root); a prompt sercon
does not recognise, from `--sercon-prompt REGEX`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from emulator import GuestSpec

from .pytest_plugin import _PROMPTS
from .readiness import CHECKS, Report, check_image, disk_format

pytestmark = [pytest.mark.guest, pytest.mark.slow]


class ReadinessWarning(UserWarning):
    """A readiness check that passed with a reservation (see its message for the fix)."""


@pytest.fixture(scope="module")
def readiness_report(sercon_home: Path, sercon_spec: GuestSpec) -> Report:
    spec = sercon_spec
    if spec.disk and not spec.kernel:  # vmdk, vhd, vhdx too: ask qemu-img, not the first bytes
        spec = spec.replace(disk_format=disk_format(spec.disk))
    if spec.disk:
        spec = spec.replace(disk_snapshot=True)
    user = os.environ.get("SERCON_CHECK_USER") or spec.user or "root"
    password = os.environ.get("SERCON_CHECK_PASSWORD") or spec.password
    if password is None:
        pytest.fail("set SERCON_CHECK_PASSWORD (and SERCON_CHECK_USER) to the image's login")
    report = check_image(spec, user, password, label=spec.image or spec.disk or spec.kernel,
                         shell_prompt=_PROMPTS.get("shell"), login_prompt=_PROMPTS.get("login"))
    print(f"\nsercon readiness of {report.image}: verdict in {report.seconds:.1f} s")
    return report


@pytest.mark.parametrize("check_id", list(CHECKS))
def test_readiness(readiness_report: Report, check_id: str) -> None:
    check = readiness_report.get(check_id)
    message = f"{check.title}: {check.detail}" + (f"\nfix: {check.fix}" if check.fix else "")
    if check.status == "fail":
        pytest.fail(message, pytrace=False)
    if check.status == "skip":
        pytest.skip(message)
    if check.status == "warn":
        warnings.warn(message, ReadinessWarning, stacklevel=1)
