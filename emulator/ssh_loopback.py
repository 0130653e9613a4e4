"""A real OpenSSH server on 127.0.0.1 for `qemu+ssh://` tests: `with loopback_sshd() as sshd: ...`.

It runs as a child process (`sshd -D -e -f CONFIG`) on a free port with everything it uses in a
private temporary folder (0700, files 0600 whatever the umask): a throw-away host key, a throw-away
client key authorized for root, the known_hosts line for the host key, its config and its log.
/etc/ssh is not read or touched. Leaving the block stops it (and the sessions it forked) and removes
the folder.

libvirt's `ssh` transport runs the system `ssh` binary and takes no known_hosts file (`known_hosts=`
is for the libssh and libssh2 transports only). `libvirt_uri()` therefore names, with `command=`, a
small wrapper in the folder that pins ssh to this server's host key and to the one client key; with
`verify_host_key=False` it gives the plain `keyfile=...&no_verify=1` form instead, which makes ssh
record the key in root's own ~/.ssh/known_hosts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from emulator.trust import PRIVATE_FILE, private_dir, write_private

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
START_TIMEOUT = 10.0


class LoopbackSshdError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoopbackSshd:
    port: int
    directory: Path
    key_file: Path
    known_hosts: Path
    ssh_command: Path
    process: subprocess.Popen[bytes]
    user: str = "root"

    def libvirt_uri(self, path: str = "/system", *, verify_host_key: bool = True) -> str:
        """`qemu+ssh://root@127.0.0.1:PORT/system?...` for this server. `no_tty=1` makes ssh fail
        instead of asking for a password or passphrase (BatchMode)."""
        base = f"qemu+ssh://{self.user}@{HOST}:{self.port}{path}?keyfile={quote(str(self.key_file))}"
        if verify_host_key:
            return f"{base}&command={quote(str(self.ssh_command))}&no_tty=1"
        return f"{base}&no_verify=1&no_tty=1"

    def ssh_argv(self, *command: str) -> list[str]:
        """The OpenSSH client command line for this server (the same options as the wrapper)."""
        return [str(self.ssh_command), "-i", str(self.key_file), "-p", str(self.port), "-l", self.user, "--", HOST,
                *command]

    @property
    def log(self) -> str:
        try:
            return (self.directory / "sshd.log").read_text(errors="replace")
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    for f in (path, path.with_name(path.name + ".pub")):
        os.chmod(f, PRIVATE_FILE)


def _write_executable(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    os.fchmod(fd, 0o700)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _config(directory: Path, port: int) -> str:
    return "\n".join([
        f"Port {port}",
        f"ListenAddress {HOST}",
        f"HostKey {directory / 'host_ed25519'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        "PidFile none",  # a child process: its pid is known, and sshd would write the file 0644
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "UsePAM no",
        # The folder is private (0700) but under /tmp, which StrictModes rejects as group/world writable.
        "StrictModes no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        "",
    ])


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """True once the server sends its banner; False if it exited (a lost race for the port)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    raise LoopbackSshdError(f"sshd on {HOST}:{port} sent no banner in {START_TIMEOUT:.0f} s: {log.read_text()[-500:]}")


def _children(pid: int) -> list[int]:
    """The sessions sshd forked (each a child of the listener)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the listener and the sessions it forked (they outlive it otherwise, a client still on)."""
    sessions = _children(proc.pid) if proc.poll() is None else []
    for pid in [proc.pid, *sessions]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5.0
    while (sessions := [pid for pid in sessions if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in sessions:  # still there after 5 s
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited; whoever adopted it reaps it


@contextmanager
def loopback_sshd(user: str = "root") -> Iterator[LoopbackSshd]:
    """A throw-away sshd on 127.0.0.1 that lets `user` in with the yielded key only. Needs root."""
    if os.geteuid() != 0:
        raise LoopbackSshdError("loopback_sshd() needs root (sshd switches users and reads host keys)")
    if not Path(SSHD).exists():
        raise LoopbackSshdError(f"{SSHD} is missing: apt-get install openssh-server")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder, else it refuses
    directory = private_dir(Path(tempfile.mkdtemp(prefix="sercon-sshd-")))
    proc: subprocess.Popen[bytes] | None = None
    try:
        _keygen(directory / "host_ed25519", "sercon loopback host")
        _keygen(directory / "client_ed25519", "sercon loopback client")
        write_private(directory / "authorized_keys", (directory / "client_ed25519.pub").read_text())
        log = directory / "sshd.log"
        for _attempt in range(5):
            port = free_port()
            write_private(directory / "sshd_config", _config(directory, port))
            host_key = (directory / "host_ed25519.pub").read_text().split()
            write_private(directory / "known_hosts", f"[{HOST}]:{port} {host_key[0]} {host_key[1]}\n")
            with open(log, "ab") as log_fh:
                os.fchmod(log_fh.fileno(), PRIVATE_FILE)
                proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
                                        stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh)
            if _wait_ready(proc, port, log):
                break
            _stop(proc)
            proc = None
        else:
            raise LoopbackSshdError(f"sshd did not start on a free port: {log.read_text()[-500:]}")
        wrapper = directory / "ssh"
        options = [
            "-F", "/dev/null",  # not /etc/ssh/ssh_config nor ~/.ssh/config
            "-o", f"UserKnownHostsFile={directory / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
        ]  # no -i: the key is the URI's keyfile=, so a wrong one there is refused
        _write_executable(wrapper, f"#!/bin/sh\nexec ssh {shlex.join(options)} \"$@\"\n")
        yield LoopbackSshd(
            port=port,
            directory=directory,
            key_file=directory / "client_ed25519",
            known_hosts=directory / "known_hosts",
            ssh_command=wrapper,
            process=proc,
            user=user,
        )
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m emulator.ssh_loopback -- COMMAND ...`: run COMMAND while a loopback sshd is up, with
    `{uri}` in its arguments (and $SERCON_SSH_HOST) set to the qemu+ssh:// URI that reaches this
    machine's libvirt through it; the sshd stops when COMMAND ends, and its exit status is returned."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m emulator.ssh_loopback -- COMMAND [ARG ...]  ({uri} is the qemu+ssh:// URI)",
              file=sys.stderr)
        return 2
    try:
        with loopback_sshd() as sshd:
            uri = sshd.libvirt_uri()
            env = {**os.environ, "SERCON_SSH_HOST": uri}
            return subprocess.call([a.replace("{uri}", uri) for a in args], env=env)
    except LoopbackSshdError as exc:
        print(f"ssh_loopback: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
