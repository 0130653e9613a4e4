"""A warm start for owner processes: a per-user fork server with the owner's modules already imported.

An owner started the plain way (`python -m emulator.daemon`) spends ~75 ms starting Python and
importing asyncio, qemu.qmp and sercon before it can spawn QEMU: a third of a snapshot restore,
and 3% of a two-second boot. `Machine.start` therefore asks a fork server first: a process that has
imported all of it once and forks an owner per request, which then runs `emulator.daemon.main` as
the plain owner would, and reports its READY or ERROR line back over the request's connection.

- One fork server per user, SERCON_HOME, Python, sercon code version and SERCON_* environment (the
  socket's name hashes them all, so a changed checkout or setting gets a fresh one); it listens on
  `$SERCON_HOME/forkserver/KEY.sock` (a private folder), serves only its own uid (SO_PEERCRED), and
  exits after `IDLE_S` without a request, or soon after its socket is removed.
- The first start with no fork server running takes the plain path and starts one for the next.
- `SERCON_FORKSERVER=0` turns it off (every owner starts the plain way).
- The fork server runs no event loop and no thread, so forking it is safe; each owner restores the
  default SIGCHLD (the server ignores it so the kernel reaps owners), its requester's environment
  and working folder, and writes stderr to its owner.log.
- After a request for a new guest from a snapshot, it also forks a *standby* owner that loads the
  snapshot into a paused QEMU; the next such request is handed to it. It keeps one per recent
  snapshot, up to SERCON_STANDBYS (emulator/standby.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, settings
from .trust import private_dir

if TYPE_CHECKING:
    from .standby import Pool

IDLE_S = 600.0
#: How often an idle server checks that its socket is still there (a deleted SERCON_HOME ends it).
CHECK_S = 5.0
REQUEST_TIMEOUT_S = 5.0
PACKAGE = Path(__file__).resolve().parent


def enabled() -> bool:
    return settings.switch("SERCON_FORKSERVER")


def server_key(env: dict[str, str]) -> str:
    """What a warm owner depends on: the interpreter, the code, the SERCON_* settings."""
    h = hashlib.sha256(sys.executable.encode())
    for path in _sources():
        stat = path.stat()
        h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for name in sorted(env):
        if name.startswith("SERCON_") or name in ("PYTHONPATH", "PATH"):
            h.update(f"{name}={env[name]}".encode())
    h.update(str(os.getuid()).encode())
    return h.hexdigest()[:12]


def _sources() -> list[Path]:
    """The package's Python files, without walking the web client's node_modules (a third of
    the cost of every guest start went to that walk)."""
    found = []
    for folder, subfolders, files in os.walk(PACKAGE):
        subfolders[:] = sorted(d for d in subfolders if d not in ("node_modules", "__pycache__"))
        found += [Path(folder, name) for name in sorted(files) if name.endswith(".py")]
    return found


def socket_path(key: str) -> Path:
    """In a private folder of its own: SERCON_HOME's mode is the user's to choose."""
    return paths.home() / "forkserver" / f"{key}.sock"


def start_owner(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> tuple[str, int] | None:
    """Ask this user's fork server for an owner running `emulator.daemon.main(argv)`: its report line
    and pid; None when no fork server answers (then one is started for the next time)."""
    key = server_key(env)
    path = socket_path(key)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        _spawn_server(key, env)
        return None
    with sock:
        request = {"argv": argv, "env": env, "cwd": os.getcwd(), "log": str(log_path)}
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        deadline = time.monotonic() + timeout
        while data.count(b"\n") < 2:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("PID "):
        return None  # the server went away before forking: the plain path
    return (lines[1] if len(lines) > 1 else ""), int(lines[0][4:])


def _spawn_server(key: str, env: dict[str, str]) -> None:
    private_dir(socket_path(key).parent)
    subprocess.Popen([sys.executable, "-m", "emulator.forkserver", str(socket_path(key))],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, env=env)


def serve(path: Path) -> int:
    """The fork server's loop (in its own session, started by `start_owner`)."""
    import emulator.daemon  # what every owner needs, imported once here
    import emulator.event_loop
    import emulator.local_qemu
    import emulator.standby

    if emulator.event_loop.uvloop_wanted():
        import uvloop  # noqa: F401  (the owners' event loop)
    try:
        import emulator.libvirt_host
    except Exception:  # without libvirt's binding, libvirt guests take the plain path's error
        pass
    os.umask(0o077)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return 0  # another fork server of this key got there first
    except OSError:
        path.unlink(missing_ok=True)
    finally:
        probe.close()
    listener.bind(str(path))
    bound = os.stat(path).st_ino
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the owners
    signal.signal(signal.SIGTERM, _exit_cleanly)  # as its idle end: the standbys go with it
    standbys = emulator.standby.Pool.from_env()
    try:
        idle_since = time.monotonic()
        while True:
            ready = select.select([listener, *standbys.channels()], [], [], CHECK_S)[0]
            standbys.drop_ended(ready)
            if listener not in ready:
                if time.monotonic() - idle_since > IDLE_S or not _still_bound(path, bound):
                    return 0  # idle, or its socket was removed (SERCON_HOME deleted) or replaced
                continue
            idle_since = time.monotonic()
            conn, _ = listener.accept()
            try:
                _serve_one(listener, conn, standbys)
            except Exception:  # one bad request never ends the server
                pass
            finally:
                conn.close()
    finally:
        standbys.discard_all()
        try:
            if os.stat(path).st_ino == bound:  # not a newer server's socket
                path.unlink()
        except OSError:
            pass
        listener.close()


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _still_bound(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _serve_one(listener: socket.socket, conn: socket.socket, standbys: Pool) -> None:
    """Serve one request: by the standby owner made for it if there is one, else by a new fork;
    then make a standby for the next request like it (see emulator/standby.py)."""
    from emulator import standby as standby_mod

    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.getuid():
        return
    conn.settimeout(REQUEST_TIMEOUT_S)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 20)
        if not chunk:
            return
        data += chunk
    request = json.loads(data)
    wanted = standby_mod.template(request) if standbys.size else None
    standby = standbys.take(wanted) if wanted is not None else None
    served = standby is not None and standby.hand(request, conn)
    if standby is not None and not served:
        standby.discard()
    if not served and os.fork() == 0:
        _owner(request, conn, listener, standbys)  # never returns
    if wanted is not None:
        standbys.add(standby_mod.start(wanted, request, become_owner, [listener, conn], standbys))


def become_owner(request: dict[str, Any], conn_fd: int) -> None:
    """This process (a fork of the server, or a standby) serves `request` from here on: its
    environment and folder of work, its owner.log as stderr, and the requester's connection as
    stdout, for the PID line now and the READY or ERROR line later. Signals are the caller's to
    reset before its event loop starts: a standby's loop already watches its QEMU, and uvloop's
    SIGCHLD handler, set below Python's `signal` module, would be lost to a reset here."""
    if os.getsid(0) != os.getpid():
        os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.set_blocking(conn_fd, True)
    os.dup2(conn_fd, 1)
    os.close(conn_fd)
    os.write(1, f"PID {os.getpid()}\n".encode())
    sys.argv = ["emulator.daemon", *request["argv"]]


def _owner(request: dict[str, Any], conn: socket.socket, listener: socket.socket, standbys: Pool) -> None:
    """The owner: its own process from here on; it never returns into the server's loop."""
    code = 1
    try:
        listener.close()
        standbys.close_copies()  # the server's: a standby must see its end when the server drops it
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the loop waits for QEMU's exit status
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the owner installs its own once it runs
        become_owner(request, os.dup(conn.fileno()))
        conn.close()
        from emulator.daemon import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the owner's own failure: in its owner.log
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
