"""Standby owners: a new guest from a snapshot takes a QEMU that was loaded before it was asked for.

A new guest from a snapshot spends most of its start in QEMU's own start-up (~40 ms here, whatever
its arguments) and in loading the state. A suite that starts one guest from a snapshot is likely
to start another from the same one. So after the fork server (emulator/forkserver.py) forks the
owner of a guest started from snapshot S, it forks one more owner, a *standby*, for the same
request: same spec, snapshot, environment and folder of work, any name.

- The standby loads S into a paused QEMU of its own (as a restore in place loads a spare, see
  emulator/local_qemu.py), in `$SERCON_HOME/standby/PID/`, and waits.
- The next request for the same spec and snapshot goes to the standby instead of a new fork: it
  gets the request and the requester's connection, becomes that guest's owner (its folder, its
  logs, its sockets) and swaps in the loaded QEMU, which keeps its files in the standby's folder
  until it ends. The fork server then forks the next standby.
- Anything else (a snapshot saved again, another spec) gets a plain owner: the owner checks the
  snapshot's files against what its QEMU loaded, and loads anew on a mismatch.
- A fork server keeps one standby per recent snapshot (and spec), at most SERCON_STANDBYS of them
  (default 2, 0 for none): a suite that goes back and forth between two snapshots finds both
  loaded. A request for a further one replaces the standby used least recently. Standbys end with
  their fork server (idle for 10 minutes, or its SERCON_HOME removed). SERCON_RESTORE_SPARE=0
  turns them off with spares; a guest on a libvirt host, or with options that hold something on
  the host (see `spares_enabled`), never gets one.
- Its QEMU is named `guest=standby-PID`: QEMU cannot be renamed once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from . import event_loop, paths, settings, snapshots
from .errors import SerconError
from .local_qemu import LocalQemu, spares_enabled
from .spec import GuestSpec
from .trust import private_dir

log = logging.getLogger("sercon.standby")

PR_SET_PDEATHSIG = 1


def folder_of(pid: int) -> Path:
    return paths.home() / "standby" / str(pid)


def template(request: dict[str, Any]) -> str | None:
    """What a request must match to be served by a standby made for another: None when no
    standby serves it (not from a snapshot, an RFC 2217 port, a libvirt host, spares off). Called
    in the fork server, whose SERCON_* settings are the request's (they are in its key)."""
    argv = list(request.get("argv", []))
    if "--from-snapshot" not in argv or "--rfc2217" in argv or "--spec" not in argv:
        return None
    try:
        spec_text = Path(argv[argv.index("--spec") + 1]).read_text()
        spec = json.loads(spec_text)
    except (OSError, ValueError, IndexError):
        return None
    if not isinstance(spec, dict) or spec.get("host") or not spares_enabled(list(spec.get("extra_args") or [])):
        return None
    snapshot = argv[argv.index("--from-snapshot") + 1] if argv.index("--from-snapshot") + 1 < len(argv) else ""
    # The request's own environment is the owner's once it takes the standby; what the standby
    # loads depends only on these (SERCON_HOME, SERCON_CACHE, SERCON_ACCEL, the cache folder...).
    env = {k: v for k, v in request.get("env", {}).items()
           if k.startswith(("SERCON_", "XDG_")) or k in ("HOME", "PATH", "PYTHONPATH")}
    return json.dumps({"spec": spec_text, "snapshot": snapshot, "env": env, "cwd": request.get("cwd")},
                      sort_keys=True)


class Standby:
    """The fork server's handle on its standby owner."""

    def __init__(self, pid: int, channel: socket.socket, template: str) -> None:
        self.pid = pid
        self.channel = channel
        self.template = template
        try:  # signalled through it: the server reaps nothing, so the pid could be another's later
            self.pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None

    def hand(self, request: dict[str, Any], conn: socket.socket) -> bool:
        """Give the standby this request and its connection; False if it is gone."""
        try:
            socket.send_fds(self.channel, [json.dumps(request).encode()], [conn.fileno()])
        except OSError:
            return False
        self.close_copies()  # it is that guest's owner now, no longer ours
        return True

    def discard(self) -> None:
        """End it (its QEMU goes with it) and remove its files."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        self.close_copies()
        shutil.rmtree(folder_of(self.pid), ignore_errors=True)

    def close_copies(self) -> None:
        """Close this process's descriptors of it (the server's, or a fork's inherited copies)."""
        self.channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Pool:
    """The fork server's standbys, one per template, the least recently used first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_template: dict[str, Standby] = {}

    @classmethod
    def from_env(cls) -> Pool:
        return cls(settings.number("SERCON_STANDBYS"))

    def channels(self) -> list[socket.socket]:
        return [standby.channel for standby in self._by_template.values()]

    def drop_ended(self, ready: list[Any]) -> None:
        """Discard the standbys whose channel is readable: they ended by themselves."""
        for key, standby in list(self._by_template.items()):
            if standby.channel in ready:
                del self._by_template[key]
                standby.discard()

    def take(self, template_key: str) -> Standby | None:
        return self._by_template.pop(template_key, None)

    def add(self, standby: Standby) -> None:
        """Keep `standby` as the most recent; discard the least recent ones beyond `size`."""
        self._by_template[standby.template] = standby
        while len(self._by_template) > self.size:
            oldest = next(iter(self._by_template))
            self._by_template.pop(oldest).discard()

    def close_copies(self) -> None:
        """In a fork of the server: close its copies, so a standby sees its own end when the server drops it."""
        for standby in self._by_template.values():
            standby.close_copies()
        self._by_template.clear()

    def discard_all(self) -> None:
        while self._by_template:
            self._by_template.popitem()[1].discard()


def start(template_key: str, request: dict[str, Any], become_owner: Any,
          server_sockets: list[socket.socket], pool: Pool) -> Standby:
    """Fork a standby owner for requests like `request` (in the fork server, after forking the
    owner that serves it). `become_owner(request, conn_fd)` is the fork server's way to turn the
    process into a request's owner; `server_sockets` and `pool` are the server's, closed in the standby."""
    _sweep()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = os.getpid()
    pid = os.fork()
    if pid != 0:
        theirs.close()
        return Standby(pid, ours, template_key)
    code = 1
    try:
        ours.close()
        for sock in server_sockets:
            sock.close()
        pool.close_copies()
        _die_with(server)
        code = _serve(request, theirs, become_owner)
    except BaseException:  # its own failure: in its standby.log
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _die_with(server: int) -> None:
    """A standby ends with its fork server (a standby that became an owner clears this)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server:  # it ended before the prctl
        os._exit(0)


def _outlive_server() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 0)


def _sweep() -> None:
    """Remove the folders of standbys that ended without cleaning up (a killed fork server)."""
    base = paths.home() / "standby"
    if not base.is_dir():
        return
    for folder in base.iterdir():
        if folder.name.isdigit() and not Path(f"/proc/{folder.name}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _serve(request: dict[str, Any], channel: socket.socket, become_owner: Any) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # asyncio waits for QEMU's exit status
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    private_dir(folder_of(0).parent)
    folder = private_dir(folder_of(os.getpid()))
    log_fd = os.open(folder / "standby.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("qemu").setLevel(logging.WARNING)
    return event_loop.run(_stand_by(request, channel, folder, become_owner))


class _Unseen:
    """A standby's backend reports nothing: no guest is its yet."""

    def on_powered_on(self, **fields: Any) -> None: ...
    def on_serial(self, data: bytes) -> None: ...
    def on_qemu_event(self, name: str, data: dict[str, Any]) -> None: ...
    def on_exit(self, how: str, detail: str) -> None: ...
    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        return {}


async def _stand_by(request: dict[str, Any], channel: socket.socket, folder: Path, become_owner: Any) -> int:
    from .daemon import PARSER, run, setup

    args = PARSER.parse_args(request["argv"])
    spec = GuestSpec.from_json(args.spec.read_text())
    backend = LocalQemu(f"standby-{os.getpid()}", spec, folder, _Unseen())
    try:
        await backend.choose_accel()
        key = snapshots.snapshot_key(spec, backend.accel, await backend.hypervisor())
        await backend.keep_spare(snapshots.find(args.from_snapshot, key))
    except (SerconError, OSError) as exc:  # then the guest that comes loads its QEMU as without
        log.warning("standby for snapshot %s: nothing loaded: %s", args.from_snapshot, exc)
    assignment = await _assignment(channel)
    if assignment is None:  # replaced, or the fork server ended
        await backend.close()
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    mine, conn_fd = assignment
    _outlive_server()
    become_owner(mine, conn_fd)
    args, spec = setup(mine["argv"])
    port = args.rfc2217_port if args.rfc2217 else None
    return await run(args.name, args.folder, spec, port, args.from_snapshot, standby=backend)


async def _assignment(channel: socket.socket) -> tuple[dict[str, Any], int] | None:
    """The request this standby serves and its requester's connection; None at the channel's end."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(channel.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(channel.fileno())
    try:
        message, fds, _flags, _address = socket.recv_fds(channel, 1 << 20, 1)
    except OSError:
        return None
    finally:
        channel.close()
    if not message or not fds:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(message), fds[0]
