"""The owner's state of a guest, as one enum (a str, so it reads and serializes as before)."""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Where the guest is. Changed only by `ConsoleOwner._set_state`, which logs each change."""

    STARTING = "starting"  # QEMU is being started (or a snapshot loaded)
    RUNNING = "running"
    PAUSED = "paused"      # QEMU stopped the CPUs (snapshot save, or a QMP stop)
    OFF = "off"            # the guest powered itself off; QEMU waits (-no-shutdown)
    DEAD = "dead"          # QEMU exited without being asked to
    STOPPED = "stopped"    # no QEMU: before power-on, or for good after `stop`
