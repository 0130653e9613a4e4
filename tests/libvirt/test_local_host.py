"""The local libvirt host (`emulator.libvirt_local`) and the loopback sshd (`emulator.ssh_loopback`)
with the real libvirtd and a real OpenSSH server. Root only (as CI runs); the running libvirtd is
never stopped here.

Each test says in its docstring how it was seen to fail: the code broken on purpose, once.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator import libvirt_local
from emulator.libvirt_local import LIBVIRTD, VIRTLOGD, daemon_pid, ensure, ensure_local_libvirt
from emulator.ssh_loopback import _alive, _children, loopback_sshd, port_open

libvirt = pytest.importorskip("libvirt")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="starts libvirtd and sshd: root only"),
    pytest.mark.skipif(libvirt_local.daemon_binary("libvirtd") is None, reason="libvirt-daemon not installed"),
]


@pytest.fixture(scope="module")
def uri() -> str:
    return ensure_local_libvirt()


@pytest.fixture
def conn(uri: str) -> Iterator[Any]:
    c = libvirt.open(uri)
    yield c
    c.close()


def test_second_ensure_starts_nothing(uri: str) -> None:
    """A second set-up finds everything in place: no daemon started, nothing changed, same pids.
    Failed with the running check in `_start` skipped: it ran `virtlogd -d` again, which failed on
    the pid file the running virtlogd holds."""
    pids = (daemon_pid(LIBVIRTD), daemon_pid(VIRTLOGD))
    again = ensure()
    assert (again.started, again.changed) == ([], [])
    assert again.uri == uri == "qemu:///system"
    assert (daemon_pid(LIBVIRTD), daemon_pid(VIRTLOGD)) == pids
    assert pids[0] is not None and pids[1] is not None


def test_default_pool_active_and_open_to_qemu(uri: str, conn: Any) -> None:
    """The `sercon` pool is active, autostarted, and libvirt-qemu may pass through its folder (o+x).
    Failed with `ensure_pool`'s o+x step removed after `chmod 0700` of the folder."""
    pool = conn.storagePoolLookupByName("sercon")
    assert pool.isActive() and pool.autostart()
    mode = Path(libvirt_local._pool_path(pool.XMLDesc(0))).stat().st_mode
    assert mode & stat.S_IXOTH, oct(mode)


@pytest.fixture
def scratch_pool(conn: Any) -> Iterator[str]:
    name = f"sercon-test-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.destroy()
    pool.delete(0)
    pool.undefine()


def test_missing_pool_is_created_and_a_stopped_one_restarted(conn: Any, scratch_pool: str) -> None:
    """A pool that does not exist is defined, built, started and autostarted; one that was stopped is
    started again. Failed without `pool.create(0)` in `ensure_pool`: the pool stayed inactive."""
    first = ensure(scratch_pool)
    pool = conn.storagePoolLookupByName(scratch_pool)
    assert pool.isActive() and pool.autostart()
    assert Path(first.pool_path).is_dir()
    assert f"pool {scratch_pool} defined" in first.changed
    pool.destroy()
    assert not pool.isActive()
    second = ensure(scratch_pool)
    assert pool.isActive()
    assert second.changed == [f"pool {scratch_pool} started"]
    os.chmod(first.pool_path, 0o700)  # made by hand, say: QEMU could not reach the images
    third = ensure(scratch_pool)
    assert third.changed == [f"pool {scratch_pool} folder o+x"]
    assert Path(first.pool_path).stat().st_mode & stat.S_IXOTH


def test_loopback_uri_opens_and_answers(conn: Any) -> None:
    """libvirt over the loopback sshd reaches the same libvirtd: getVersion() and `virsh version`
    answer. Failed with the wrong folder in AuthorizedKeysFile: 'Permission denied (publickey)'."""
    with loopback_sshd() as sshd:
        remote = libvirt.open(sshd.libvirt_uri())
        try:
            assert remote.getVersion() == conn.getVersion()
            assert remote.getLibVersion() == conn.getLibVersion()
        finally:
            remote.close()
        virsh = subprocess.run(["virsh", "-c", sshd.libvirt_uri(), "version"], capture_output=True, text=True,
                               timeout=60, check=False)
        assert virsh.returncode == 0, virsh.stderr
        assert "Running hypervisor: QEMU" in virsh.stdout


def test_wrong_key_refused_clearly() -> None:
    """A key the server does not know is refused at once, with ssh's reason in libvirt's error.
    Failed with `-i` of the right key added to the ssh wrapper: the wrong keyfile= still got in."""
    with loopback_sshd() as sshd:
        wrong = sshd.directory / "wrong_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
        started = time.monotonic()
        with pytest.raises(libvirt.libvirtError, match=r"Permission denied \(publickey\)"):
            libvirt.open(sshd.libvirt_uri().replace(str(sshd.key_file), str(wrong)))
        assert time.monotonic() - started < 20  # BatchMode: no prompt waiting for a password


def test_changed_host_key_refused() -> None:
    """The default URI checks the server's host key against the context's own known_hosts.
    Failed with StrictHostKeyChecking=no in the wrapper (as no_verify=1 does): it connected."""
    with loopback_sshd() as sshd:
        other = sshd.directory / "other_host"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        kind, key = other.with_name("other_host.pub").read_text().split()[:2]
        sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
        with pytest.raises(libvirt.libvirtError, match="REMOTE HOST IDENTIFICATION HAS CHANGED"):
            libvirt.open(sshd.libvirt_uri())


def test_private_files_and_clean_exit() -> None:
    """Under umask 000 the folder is 0700 and its files 0600 (the wrapper 0700); on exit sshd and its
    sessions are gone, the port is closed and the folder removed. Failed with `_stop` skipped in
    `loopback_sshd` (sshd still running after the block), and with `_keygen`'s chmod removed
    (ssh-keygen writes the .pub files 0644)."""
    old = os.umask(0)
    try:
        with loopback_sshd() as sshd:
            os.umask(old)
            assert stat.S_IMODE(sshd.directory.stat().st_mode) == 0o700
            for f in sshd.directory.iterdir():
                want = 0o700 if f.name == "ssh" else 0o600
                assert stat.S_IMODE(f.stat().st_mode) == want, f"{f.name} {oct(f.stat().st_mode)}"
            held = libvirt.open(sshd.libvirt_uri())  # a session still open at exit
            held.getVersion()
            sessions = _children(sshd.process.pid)
            assert sessions
            port, directory, proc = sshd.port, sshd.directory, sshd.process
            assert port_open(port)
    finally:
        os.umask(old)
    assert proc.returncode is not None
    assert not port_open(port)
    assert not directory.exists()
    assert not [pid for pid in sessions if _alive(pid)]
    try:
        held.close()
    except libvirt.libvirtError:
        pass


def test_not_root_one_line() -> None:
    """As another user (nobody) the command prints one line about root on stderr, nothing on stdout,
    and exits 1 (the running libvirtd wants polkit for non-root clients, which this machine lacks).
    Failed with the non-root branch removed: it retried the refused connection past the 60 s timeout."""
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as tmp:
        # nobody may not read the venv (or the Python behind it): the module (standard library only
        # but for libvirt) and libvirt-python's files, copied for the system Python
        script = Path(tmp) / "libvirt_local.py"
        shutil.copy(libvirt_local.__file__, script)
        binding = Path(libvirt.__file__).parent
        for f in [binding / "libvirt.py", *binding.glob("libvirtmod.cpython-*.so")]:
            shutil.copy(f, tmp)
        os.chmod(tmp, 0o755)
        for f in Path(tmp).iterdir():
            os.chmod(f, 0o755)
        proc = subprocess.run(
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
             "env", f"PYTHONPATH={tmp}", "/usr/bin/python3", str(script)],
            capture_output=True, text=True, timeout=60, check=False, cwd="/",
        )
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "root" in lines[0], proc.stderr
