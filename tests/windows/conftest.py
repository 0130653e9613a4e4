"""Says at the end of the run, plainly, whether real Windows was tested or only the SAC simulator."""

from __future__ import annotations

import os
from typing import Any


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    tr = terminalreporter
    tr.section("Windows console suite")
    if os.environ.get("WINDOWS_IMAGE"):
        tr.write_line(f"real Windows: tested with WINDOWS_IMAGE={os.environ['WINDOWS_IMAGE']} "
                      f"(firmware {os.environ.get('WINDOWS_FIRMWARE', 'bios')}, booted from a throw-away overlay)")
        return
    tr.write_line("real Windows: SKIPPED (WINDOWS_IMAGE is not set).", yellow=True, bold=True)
    tr.write_line("Only the SAC SIMULATOR suite ran (images/sac-sim: a Linux guest that models SAC; "
                  "it is not Windows).")
    tr.write_line("To test a real image: prepare it as images/windows/README.md says (prepare-image.sh, or")
    tr.write_line("autounattend-ems.xml for a fresh install), then")
    tr.write_line("  make test-windows WINDOWS_IMAGE=/path/win.qcow2 WINDOWS_USER=Administrator WINDOWS_PASSWORD=... "
                  "[WINDOWS_FIRMWARE=uefi]")
