"""`sercon serve` with a guest on each kind of host: a local QEMU process, a domain of this machine's
libvirtd (`qemu:///system`), and a domain reached over SSH (`qemu+ssh://` through a real OpenSSH
server on 127.0.0.1, `emulator.ssh_loopback`). Everything is real: the gateway, TLS, websockets,
libvirtd, sshd, the guests (linux-initramfs, root / sercon). Root only (as CI runs).

One fleet for the module; the last test stops the gateway and checks that nothing it started is
left (owners, libvirt domains, SSH sessions); the fixture stops whatever is still up if a test
failed before. Guest names carry a random suffix: libvirt domains are found again by a title made
of the guest name, so two runs on one machine must not share names.

Each test says in its docstring how it was seen to fail: the code broken on purpose, once.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emulator import libvirt_local
from emulator.gateway.auth import hash_password
from emulator.host_uri import display
from emulator.machine import Machine
from emulator.ssh_loopback import LoopbackSshd, _alive, _children, loopback_sshd
from tests.web.client import Client, Served, WsReader
from tests.web.conftest import ROOT, start_serve, stop_serve

libvirt = pytest.importorskip("libvirt")

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts libvirtd and sshd: root only"),
    pytest.mark.skipif(libvirt_local.daemon_binary("libvirtd") is None, reason="libvirt-daemon not installed"),
]

PASSWORD = "fleet-hosts-pw"
#: The three kinds of host, as the test ids name them.
KINDS = ("local", "system", "ssh")
LOGIN_TIMEOUT = 300.0


@dataclass
class HostsFleet:
    served: Served
    proc: subprocess.Popen[bytes]
    sshd: LoopbackSshd
    #: kind -> VM name (also the guest name)
    vms: dict[str, str]
    #: kind -> the host URI in the fleet file (None: a local process)
    hosts: dict[str, str | None]
    #: kind -> libvirt domain name, as `info` gave it while the guest ran
    domains: dict[str, str] = field(default_factory=dict)
    owner_pids: dict[str, int] = field(default_factory=dict)

    def machine(self, kind: str) -> Machine:
        return Machine(name=self.vms[kind])


def write_fleet(path: Path, vms: dict[str, str], hosts: dict[str, str | None]) -> Path:
    tables = []
    for kind, name in vms.items():
        host = f'host = "{hosts[kind]}"\n' if hosts[kind] else ""
        tables.append(f'[vms.{name}]\nimage = "linux-initramfs"\nmemory_mb = 256\n{host}'
                      'roles = { erin = "owner" }\n')
    path.write_text("[serve]\nidle_timeout = 3600\n\n" + "\n".join(tables)
                    + f'\n[users.erin]\npassword = "{hash_password(PASSWORD)}"\n')
    return path


def our_domains(names: list[str]) -> list[str]:
    """Active domains on this machine's libvirtd titled as one of `names`' guests."""
    conn = libvirt.open(libvirt_local.URI)
    try:
        found = []
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                title = dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None)
            except libvirt.libvirtError:
                continue
            if any(title.startswith(f"sercon guest {name} of ") for name in names):
                found.append(f"{dom.name()} ({title})")
        return found
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostsFleet]:
    libvirt_local.ensure_local_libvirt()
    base = tmp_path_factory.mktemp("fleet-hosts")
    home = base / "home"
    suffix = secrets.token_hex(3)
    vms = {kind: f"fh-{kind}-{suffix}" for kind in KINDS}
    old_home = os.environ.get("SERCON_HOME")
    os.environ["SERCON_HOME"] = str(home)  # Machine(name=...) and `sercon ls` here see the gateway's guests
    proc = None
    try:
        with loopback_sshd() as sshd:
            hosts: dict[str, str | None] = {"local": None, "system": libvirt_local.URI, "ssh": sshd.libvirt_uri()}
            proc, info = start_serve(home, write_fleet(base / "fleet.toml", vms, hosts))
            fleet = HostsFleet(served=Served(home=home, info=info, passwords={"erin": PASSWORD}), proc=proc,
                               sshd=sshd, vms=vms, hosts=hosts)
            try:
                yield fleet
            finally:
                if proc.poll() is None:
                    stop_serve(proc)
                for name in vms.values():  # a guest the gateway failed to stop (the sshd ends next)
                    Machine(name=name).stop()
    finally:
        if proc is not None and proc.poll() is None:
            stop_serve(proc)
        if old_home is None:
            os.environ.pop("SERCON_HOME", None)
        else:
            os.environ["SERCON_HOME"] = old_home


def run(coro: Any, limit: float = LOGIN_TIMEOUT + 300) -> Any:
    """Run a client coroutine; one that hangs fails with where it waited, instead of stalling the suite."""

    async def guarded() -> Any:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            stack = io.StringIO()
            task.print_stack(file=stack)
            task.cancel()
            raise AssertionError(f"the client hung for {limit:.0f} s at:\n{stack.getvalue()}")
        return task.result()

    return asyncio.run(guarded())


def test_fleet_lists_every_vm_and_host(fleet: HostsFleet) -> None:
    """The gateway lists the three VMs running; `sercon ls` and `info` show each one's host: `local`,
    `qemu:///system`, and the ssh URI without its query (key file and ssh wrapper stay out of
    listings); the two libvirt guests run as domains of this machine's libvirtd, the ssh one through
    a session of the loopback sshd. Failed with `backend_for` ignoring `spec.host` (all three ran as
    local processes: `info()["backend"]` was `local`; the last test failed too, on no domains)."""

    async def listing() -> dict[str, Any]:
        async with Client(fleet.served) as c:
            assert await c.login("erin") == 200
            status, body = await c.call("GET", "/api/vms")
            assert status == 200, body
            return {vm["name"]: vm for vm in body["vms"]}

    listed = run(listing())
    assert sorted(listed) == sorted(fleet.vms.values())
    for name in fleet.vms.values():
        assert listed[name]["state"] == "running", listed[name]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ls = subprocess.run([sys.executable, "-m", "emulator.cli", "ls"], capture_output=True, text=True, env=env,
                        timeout=120, check=False)
    assert ls.returncode == 0, ls.stderr
    rows = {line.split()[0]: line.split() for line in ls.stdout.splitlines()[1:] if line.strip()}
    for kind, name in fleet.vms.items():
        uri = fleet.hosts[kind]
        want = display(uri) if uri else "local"
        assert name in rows, ls.stdout
        assert rows[name][3] == want, f"{kind}: {rows[name]}\n{ls.stdout}"
        assert listed[name]["host"] == want, listed[name]  # the gateway's listing says it too
        info = fleet.machine(kind).info()
        assert info["host"] == (display(uri) if uri else None), (kind, info)
        assert info["backend"] == ("libvirt" if uri else "local"), (kind, info)
        if uri:
            assert "?" not in info["host"] and "keyfile" not in ls.stdout
            assert info["domain"].startswith("sercon-") and info["domain_id"], info
            fleet.domains[kind] = info["domain"]

    running = our_domains(list(fleet.vms.values()))
    assert len(running) == 2, running
    assert {d.split()[0] for d in running} == {fleet.domains["system"], fleet.domains["ssh"]}
    # The qemu+ssh guest's owner holds its libvirt connection through a session of this sshd.
    assert _children(fleet.sshd.process.pid), fleet.sshd.log[-2000:]
    assert "Accepted publickey for root" in fleet.sshd.log


@pytest.mark.parametrize("kind", KINDS)
def test_console_logs_in_and_runs_a_command(fleet: HostsFleet, kind: str) -> None:
    """Over the websocket: Enter brings the guest's `login:` prompt, typed input is echoed, root /
    sercon logs in, and a command's output (computed by the guest, so not its echo) comes back; all
    of it is in the guest's serial log too. Failed for `system` and `ssh` (not `local`) with
    `LibvirtDomain._on_console` dropping the bytes it read: no `login:` on the websocket (and the
    other tests on those two guests, and the last one, failed on their empty serial logs)."""
    name = fleet.vms[kind]
    mark = secrets.token_hex(4)
    command = f"echo {kind}-$((6*7))-{mark}"

    async def go() -> bytes:
        async with Client(fleet.served) as c:
            assert await c.login("erin") == 200
            r = WsReader(await c.ws(name, from_offset=0))  # the whole boot, then live output
            hello = await r.frame("hello")
            assert hello["mode"] == "interactive" and hello["offset"] == 0, hello
            await r.expect(b"login: ", timeout=LOGIN_TIMEOUT)  # the getty's first prompt
            await r.drain()
            since = len(r.data)
            await r.ws.send_json({"type": "input", "data": "\r"})
            await r.expect(b"login: ", since=since)
            since = len(r.data)
            await r.ws.send_json({"type": "input", "data": "root\r"})
            await r.expect(b"root", since=since)  # the getty echoes the name
            await r.expect(b"Password:", since=since)
            await r.ws.send_json({"type": "input", "data": "sercon\r"})
            await r.expect(b"# ", since=since)
            await r.drain()
            since = len(r.data)
            await r.ws.send_bytes(command.encode() + b"\r")  # binary input frames, as xterm.js sends
            await r.expect(command.encode(), since=since)  # the shell's echo of what was typed
            await r.expect(f"{kind}-42-{mark}".encode(), since=since)
            await r.expect(b"# ", since=since)
            await r.ws.send_json({"type": "input", "data": "exit\r"})
            await r.ws.close()
            return r.data

    seen = run(go())
    assert f"{kind}-42-{mark}".encode() in seen
    log = fleet.served.log_bytes(name)
    assert command.encode() in log and f"{kind}-42-{mark}".encode() in log


@pytest.mark.parametrize("kind", KINDS)
def test_rest_actions_reach_the_guest(fleet: HostsFleet, kind: str) -> None:
    """POST sysrq `h` and nmi through the REST API: each is recorded in the guest's events (by the
    web user) and the kernel's answer follows in its serial log (SysRq's help text, the NMI
    message). Failed for `system` and `ssh` (not `local`) with `send_break` of `LibvirtDomain` doing
    nothing: the `h` reached the getty as a typed letter, no `sysrq: HELP` in 60 s. (The NMI half
    was not seen failing: that run stopped at the SysRq assertion.)"""
    name = fleet.vms[kind]
    fleet.served.wait_log(name, b"login: ", timeout=LOGIN_TIMEOUT)
    machine = fleet.machine(kind)

    async def post(action: str, body: dict[str, Any] | None) -> dict[str, Any]:
        async with Client(fleet.served) as c:
            assert await c.login("erin") == 200
            status, answer = await c.call("POST", f"/api/vms/{name}/{action}", body)
            assert status == 200, answer
            return dict(answer)

    for action, body, event, answer in (("sysrq", {"keys": "h"}, "sysrq", b"sysrq: HELP"),
                                        ("nmi", None, "nmi", b"NMI received")):
        before = len(fleet.served.log_bytes(name))
        result = run(post(action, body))
        assert result["ok"] and result["vm"] == name, result
        recorded = [e for e in machine.events() if e["event"] == event and e.get("offset", 0) >= before]
        assert recorded, machine.events()[-5:]
        assert "web:erin@" in str(recorded[-1].get("by", "")), recorded[-1]
        fleet.served.wait_log(name, answer, since=before, timeout=60)
        if event == "sysrq":
            assert recorded[-1]["keys"] == "h"


def test_stopping_the_gateway_ends_everything(fleet: HostsFleet) -> None:
    """SIGTERM to the gateway: it exits 0, every owner process is gone, no libvirt domain of these
    guests is left on the host, and the ssh guest's session on the loopback sshd has ended. Failed
    with `FleetHost.stop_guests` doing nothing: `Machine.running()` still listed the three guests after
    the gateway exited (the fixture then stopped them)."""
    for kind in KINDS:
        pid = fleet.machine(kind).info().get("owner_pid")
        if pid:
            fleet.owner_pids[kind] = int(pid)
    before = our_domains(list(fleet.vms.values()))
    assert len(before) == 2, before
    stop_serve(fleet.proc)
    assert fleet.proc.returncode == 0, (fleet.served.home / "serve.out").read_text(errors="replace")[-2000:]
    assert Machine.running() == []
    for kind, pid in fleet.owner_pids.items():
        assert not _alive(pid), f"owner of {kind} (pid {pid}) still running"
    assert our_domains(list(fleet.vms.values())) == []
    sessions = [pid for pid in _children(fleet.sshd.process.pid) if _alive(pid)]
    assert sessions == [], f"sshd sessions still open: {sessions}"
    for kind, name in fleet.vms.items():
        events = [e["event"] for e in Machine(name=name).events()]
        assert "stop" in events, (kind, events[-5:])
        assert re.search(rb"login: ", fleet.served.log_bytes(name))
