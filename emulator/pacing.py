"""When to leave a stream unread for a moment: during a burst of output, never after an echo.

A reader that wakes for every few bytes of a burst spends more CPU than the writer, and on a small
host it takes that CPU from the guest and from everyone else on the console. Two readers pace
themselves: the owner reading COM1 (`emulator.local_qemu.Com1`) and the gateway reading the
owner's console socket for one user (`emulator.gateway.fleet_host.ConsoleConnection.output`).

`BurstPacer` is their one rule, free of I/O: after each read the caller tells it how many bytes
came, and it answers how long to wait before the next read. A run is a series of reads each less
than `gap_s` after the one before. Once a run has brought more than `min_bytes`, faster than
`min_rate` bytes/s, every read waits `hold_s` first, so the next one takes what came meanwhile in
one piece. A keystroke's echo or a command's short answer starts a new run and is read at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class BurstPacer:
    #: Reads closer together than this continue a run.
    gap_s: float
    #: A run is a burst once it has brought more than this many bytes...
    min_bytes: int
    #: ...faster than this many bytes per second (0: at any rate)...
    min_rate: float
    #: ...and then each read waits this long first.
    hold_s: float
    run_start: float = field(default=0.0, init=False)
    run_last: float = field(default=-math.inf, init=False)
    run_bytes: int = field(default=0, init=False)

    def after_read(self, size: int, now: float) -> float:
        """`size` bytes were read at `now` (a monotonic clock): seconds to wait before reading again."""
        if now - self.run_last > self.gap_s:
            self.run_start, self.run_bytes = now, 0
        self.run_last = now
        self.run_bytes += size
        if self.run_bytes <= self.min_bytes or self.run_bytes <= self.min_rate * (now - self.run_start):
            return 0.0
        return self.hold_s

    def resumed(self, now: float) -> None:
        """The wait is over at `now`: the read it lets through continues the run."""
        self.run_last = now
