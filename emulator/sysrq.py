"""Magic SysRq keys: which exist on x86 Linux, and turning user input into a key sequence.

Over a serial line a SysRq key is a BREAK followed by the key, one BREAK per key (the kernel
forgets the BREAK after one character or 5 seconds).
"""

from __future__ import annotations

from .errors import InvalidSysRqKey

#: The keys x86 Linux 6.x handles, with what they do (Documentation/admin-guide/sysrq.rst).
SYSRQ_KEYS: dict[str, str] = {
    "b": "reboot immediately, without syncing or unmounting",
    "c": "crash the system (panic, for kdump)",
    "d": "show all locks held (lockdep kernels)",
    "e": "send SIGTERM to all processes except init",
    "f": "call the OOM killer",
    "g": "enter kgdb, if configured",
    "h": "print help",
    "i": "send SIGKILL to all processes except init",
    "j": "thaw filesystems frozen by FIFREEZE",
    "k": "secure access key: kill everything on the current console",
    "l": "backtrace of all active CPUs",
    "m": "dump memory info",
    "n": "make RT tasks nice-able",
    "o": "power off",
    "p": "dump registers and flags",
    "q": "dump armed hrtimers and clock event devices",
    "r": "turn off keyboard raw mode",
    "s": "sync all mounted filesystems",
    "t": "dump the task list",
    "u": "remount all filesystems read-only",
    "v": "restore the framebuffer console",
    "w": "dump tasks in uninterruptible (blocked) state",
    "z": "dump the ftrace buffer",
    **{str(n): f"set the console log level to {n}" for n in range(10)},
}


def parse_keys(keys: str) -> list[str]:
    """Turn `"h"`, `"REISUB"` or `"r e i s u b"` into a list of single keys, or raise.

    Case does not matter (Azure's dialog takes `REISUB`); spaces and commas separate keys.
    """
    cleaned = [c for c in keys.lower() if c not in " ,\t"]
    if not cleaned:
        raise InvalidSysRqKey("no SysRq key given; " + valid_keys_hint())
    bad = sorted({c for c in cleaned if c not in SYSRQ_KEYS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidSysRqKey(f"invalid SysRq key {shown}; " + valid_keys_hint())
    return cleaned


def valid_keys_hint() -> str:
    letters = "".join(k for k in SYSRQ_KEYS if k.isalpha())
    return f"valid keys are {letters} and 0-9 (for example 'h' for help, or 'reisub')"
