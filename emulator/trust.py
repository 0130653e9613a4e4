"""Who may reach a guest: the user who started it, and root. Nobody else, whatever the umask.

- Folders sercon makes for a guest are 0700 and its files 0600 (`private_dir`, `write_private`;
  the owner process runs under umask 077, so QEMU's and the owner's own files follow).
- The Unix sockets check the connecting process's uid (`SO_PEERCRED`): same uid or root.
- Labels that other users see (a client's name in a takeover notice) lose their control characters.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
LABEL_MAX = 80


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a folder only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file that is 0600 from its first byte (not chmod-ed afterwards)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of the process at the other end of a Unix socket (None if it cannot be told)."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def trusted_uid(uid: int | None) -> bool:
    """Same user as this process, or root."""
    return uid is not None and uid in (os.getuid(), 0)


def refusal(uid: int | None) -> str:
    return (f"refused: this guest belongs to uid {os.getuid()}, and uid {uid} is neither that user nor root "
            "(use the web or SSH gateway, `sercon serve`, to share a console)")


def scrub_label(label: object) -> str:
    """A client label safe to show in other users' terminals: printable, at most 80 characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(label))
    return text[:LABEL_MAX] or "anonymous"
