"""A local libvirt host (`qemu:///system`) on a machine without systemd, set up idempotently.

`python -m emulator.libvirt_local [--pool sercon]` (or `make libvirt-local`) does, as root, only what is
missing: `/var/log/libvirt`, the `libvirt-qemu` user, access to /dev/kvm for it, `virtlogd -d` and
`libvirtd -d`, and a directory storage pool that QEMU (running as libvirt-qemu) can read. It prints
the URI last. Installing the Debian packages is the Makefile's `setup`; this only names them.

Why /dev/kvm: without udev, /dev/kvm is root-only. libvirt probes QEMU's capabilities with KVM, then
finds /dev/kvm closed to libvirt-qemu, calls its cached capabilities stale and probes again, about 14
times per domain start (a `createXML` took 56 s instead of 0.6 s). Debian's udev rule makes it
`root:kvm 0660`; this does the same, and puts libvirt-qemu in `kvm`.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

URI = "qemu:///system"
DEFAULT_POOL = "sercon"
POOL_ROOT = Path("/var/lib/libvirt")
QEMU_USER = "libvirt-qemu"
KVM_DEVICE = Path("/dev/kvm")
LOG_DIR = Path("/var/log/libvirt")
SOCKET_DIR = Path("/run/libvirt")
#: Debian packages for a local libvirt host, the ssh transport's remote side included.
DEBIAN_PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients netcat-openbsd"
#: The first open after libvirtd starts probes QEMU's capabilities (8-12 s on 2 cores).
OPEN_TIMEOUT = 90.0


class LocalLibvirtError(RuntimeError):
    """Setting up the local libvirt host failed; the message is one line meant for a person."""

    exit_code = 1


class MissingPackagesError(LocalLibvirtError):
    exit_code = 2


@dataclass(frozen=True)
class Daemon:
    name: str
    pidfile: Path
    sockets: tuple[Path, ...]


VIRTLOGD = Daemon("virtlogd", Path("/run/virtlogd.pid"), (SOCKET_DIR / "virtlogd-sock",))
LIBVIRTD = Daemon("libvirtd", Path("/run/libvirtd.pid"), (SOCKET_DIR / "libvirt-sock",))


@dataclass
class LocalLibvirt:
    """What `ensure` found and did: `started` and `changed` are empty when all was already in place."""

    uri: str
    pool: str
    pool_path: str
    started: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def _quiet_libvirt() -> Any:
    """The libvirt module, with its default handler (which prints every error to stderr) silenced:
    errors still raise `libvirt.libvirtError`; the retries below would otherwise print each one."""
    try:
        import libvirt  # libvirt-python, the `test` extra
    except ImportError as exc:
        raise LocalLibvirtError("libvirt-python is not installed: pip install libvirt-python (make setup)") from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def daemon_binary(name: str) -> str | None:
    """The daemon's path; /usr/sbin is often missing from a non-root PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def daemon_pid(daemon: Daemon) -> int | None:
    """The pid of the running daemon, from its pid file, if that process is alive and is that daemon."""
    try:
        pid = int(daemon.pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == daemon.name else None


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def daemon_running(daemon: Daemon) -> bool:
    """Running means a live pid from the pid file, or a socket that accepts (a daemon started some
    other way, with its pid file elsewhere)."""
    return daemon_pid(daemon) is not None or any(_socket_answers(s) for s in daemon.sockets)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        raise LocalLibvirtError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")


def _ensure_user(changed: list[str]) -> None:
    try:
        pwd.getpwnam(QEMU_USER)
        return
    except KeyError:
        pass
    # As Debian's libvirt-daemon-system does it, but with a group of the same name: the QEMU driver
    # of Debian's libvirt runs guests as libvirt-qemu:libvirt-qemu.
    _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(POOL_ROOT),
          "--shell", "/usr/sbin/nologin", "--comment", "Libvirt Qemu", QEMU_USER])
    changed.append(f"user {QEMU_USER}")


def _user_can_use(path: Path, user: str) -> bool:
    """Whether `user` may open `path` read-write, by its mode bits (no ACLs on /dev here)."""
    st = path.stat()
    entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        return True
    if st.st_uid == entry.pw_uid:
        return st.st_mode & (stat.S_IRUSR | stat.S_IWUSR) == stat.S_IRUSR | stat.S_IWUSR
    if st.st_gid in os.getgrouplist(user, entry.pw_gid):
        return st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    return st.st_mode & (stat.S_IROTH | stat.S_IWOTH) == stat.S_IROTH | stat.S_IWOTH


def _ensure_kvm_access(changed: list[str]) -> None:
    """What Debian's udev rule does on a normal host: /dev/kvm root:kvm 0660, libvirt-qemu in kvm.
    Only when /dev/kvm exists and libvirt-qemu cannot open it; nothing else is touched."""
    if not KVM_DEVICE.exists() or _user_can_use(KVM_DEVICE, QEMU_USER):
        return
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        _run(["groupadd", "--system", "kvm"])
        kvm_gid = grp.getgrnam("kvm").gr_gid
        changed.append("group kvm")
    st = KVM_DEVICE.stat()
    if st.st_gid != kvm_gid or st.st_mode & 0o660 != 0o660:
        os.chown(KVM_DEVICE, -1, kvm_gid)
        os.chmod(KVM_DEVICE, stat.S_IMODE(st.st_mode) | 0o660)
        changed.append(f"{KVM_DEVICE} root:kvm 0660")
    if not _user_can_use(KVM_DEVICE, QEMU_USER):
        _run(["usermod", "--append", "--groups", "kvm", QEMU_USER])
        changed.append(f"{QEMU_USER} in group kvm")


def _start(daemon: Daemon, started: list[str]) -> None:
    if daemon_running(daemon):
        return
    binary = daemon_binary(daemon.name)
    if binary is None:
        raise MissingPackagesError(f"{daemon.name} is not installed: apt-get install {DEBIAN_PACKAGES}")
    # -d: the daemon forks into the background; the foreground process returns once it has.
    _run([binary, "-d"])
    started.append(daemon.name)
    deadline = time.monotonic() + 30.0
    while not daemon_running(daemon):
        if time.monotonic() > deadline:
            raise LocalLibvirtError(
                f"{daemon.name} -d returned but {daemon.name} is not running after 30 s; "
                f"see {LOG_DIR} or run `{binary} -v` in the foreground"
            )
        time.sleep(0.1)


def open_connection(uri: str = URI, timeout: float = OPEN_TIMEOUT) -> Any:
    """`libvirt.open(uri)`, retried until it answers or `timeout` passes (a fresh libvirtd takes a few
    seconds to create its socket, and its first open probes QEMU)."""
    libvirt = _quiet_libvirt()
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                msg = str(exc).strip().replace("\n", " ")
                within = f" within {timeout:.0f} s" if timeout > 0 else ""
                raise LocalLibvirtError(f"libvirt at {uri} did not answer{within}: {msg}") from exc
        time.sleep(0.25)


def _pool_xml(name: str, path: Path) -> str:
    # 0755 root: QEMU runs as libvirt-qemu and must reach the images sercon puts in the pool.
    return (
        f"<pool type='dir'><name>{name}</name><target><path>{path}</path>"
        "<permissions><mode>0755</mode><owner>0</owner><group>0</group></permissions>"
        "</target></pool>"
    )


def ensure_pool(conn: Any, name: str, changed: list[str]) -> str:
    """The dir pool `name` defined, built, active and autostarted; returns its target path."""
    libvirt = _quiet_libvirt()
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        pool = conn.storagePoolDefineXML(_pool_xml(name, POOL_ROOT / name), 0)
        changed.append(f"pool {name} defined")
    if not pool.isActive():
        pool.build(0)  # mkdir and mode; harmless on an existing folder
        pool.create(0)
        changed.append(f"pool {name} started")
    if not pool.autostart():
        pool.setAutostart(1)
        changed.append(f"pool {name} autostart")
    path = _pool_path(str(pool.XMLDesc(0)))
    # QEMU (libvirt-qemu) opens images in the pool by name: the folder must let others through.
    # libvirt's own default is 0711; a pool folder made by hand may be 0700.
    mode = os.stat(path).st_mode
    if os.geteuid() == 0 and not mode & stat.S_IXOTH:
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        changed.append(f"pool {name} folder o+x")
    return path


def _pool_path(xml: str) -> str:
    node = ElementTree.fromstring(xml).find("./target/path")
    return (node.text or "") if node is not None else ""


def ensure(pool: str = DEFAULT_POOL, timeout: float = OPEN_TIMEOUT) -> LocalLibvirt:
    """Set up what is missing of the local libvirt host and report what that was."""
    if daemon_binary("libvirtd") is None:
        raise MissingPackagesError(f"libvirtd is not installed: apt-get install {DEBIAN_PACKAGES}")
    result = LocalLibvirt(uri=URI, pool=pool, pool_path="")
    if os.geteuid() != 0:
        # Only a daemon someone else started can serve a non-root caller, and it answers at once or
        # never (polkit, socket modes): one try, one line either way.
        if not daemon_running(LIBVIRTD):
            raise LocalLibvirtError("starting libvirtd needs root: run `make libvirt-local` as root (or sudo)")
        try:
            conn = open_connection(URI, timeout=0)
        except LocalLibvirtError as exc:
            raise LocalLibvirtError(f"needs root: the running libvirtd refused this user ({exc})") from exc
        print(f"not root: using the libvirtd already running at {URI}", file=sys.stderr)
    else:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        _ensure_user(result.changed)
        _ensure_kvm_access(result.changed)
        _start(VIRTLOGD, result.started)
        _start(LIBVIRTD, result.started)
        conn = open_connection(URI, timeout)
    try:
        result.pool_path = ensure_pool(conn, pool, result.changed)
    finally:
        conn.close()
    return result


def ensure_local_libvirt(pool: str = DEFAULT_POOL) -> str:
    """The URI of a working local libvirt host with an active dir pool `pool` (set up if missing)."""
    return ensure(pool).uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator.libvirt_local", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=DEFAULT_POOL, help="name of the dir storage pool (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=OPEN_TIMEOUT, help="seconds to wait for libvirtd")
    args = parser.parse_args(argv)
    try:
        result = ensure(args.pool, args.timeout)
    except LocalLibvirtError as exc:
        print(f"libvirt-local: {exc}", file=sys.stderr)
        return exc.exit_code
    for what in result.changed:
        print(f"set up: {what}", file=sys.stderr)
    for name in result.started:
        print(f"started: {name}", file=sys.stderr)
    print(f"pool {result.pool}: {result.pool_path} (active)", file=sys.stderr)
    print(result.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
