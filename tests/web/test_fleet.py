"""Fleet files, `sercon user add`, a fleet-wide disabled console and the idle timeout (own small fleets)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from emulator.gateway.auth import hash_password, verify_password
from emulator.gateway.fleet import FleetError, load_fleet
from emulator.gateway.serve import user_add_main

from .client import Client, Served, WsReader
from .conftest import start_serve, stop_serve

PASSWORD = "small-fleet-pw"
CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519")
CLIENT_KEY_PUBLIC = CLIENT_KEY.export_public_key().decode().strip()


def write_fleet(path: Path, serve: str, vm: str = "", ssh_key: str = "") -> Path:
    keys = f"ssh_keys = [\"{ssh_key}\"]\n" if ssh_key else ""
    path.write_text(f'[serve]\n{serve}\n\n[vms.solo]\nimage = "linux-initramfs"\nmemory_mb = 256\n{vm}\n'
                    'roles = { erin = "owner" }\n\n'
                    f'[users.erin]\npassword = "{hash_password(PASSWORD)}"\n{keys}')
    return path


def test_fleet_file_errors_name_the_entry(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    cases = {
        '[vms.a]\nroles = { ghost = "owner" }\n': "unknown user 'ghost'",
        '[users.bob]\n[vms.a]\nroles = { bob = "admin" }\n': "must be one of reader, contributor, owner",
        '[vms.a]\nmemroy_mb = 5\n': "unknown setting(s) memroy_mb",
        '[vms."../x"]\n': "VM names are letters",
        '[scale_sets.s]\ninstances = 0\n': "instances must be a whole number",
        '[serve]\ncert = "a.pem"\n[vms.a]\n': "give both cert and key",
        '[vms.a]\npolicy = "share"\n': "policy must be takeover or reject",
        '[serve]\n': "nothing to serve",
        '[vms.a-0]\n[scale_sets.a]\ninstances = 1\n': "used twice",
        'not toml = = 1': "not valid TOML",
        # Strict types: a quoted "false" used to switch the console ON (any non-empty string is truthy).
        '[serve]\nconsole_enabled = "false"\n[vms.a]\n': 'console_enabled must be true or false (no quotes), not',
        '[vms.a]\nconsole = 0\n': "console must be true or false (no quotes), not 0",
        '[vms.a]\nrfc2217 = "yes"\n': "rfc2217 must be true or false",
        '[serve]\nport = "8443"\n[vms.a]\n': "port must be a port number",
        '[serve]\nssh_port = 70000\n[vms.a]\n': "ssh_port must be a port number from 0 to 65535",
        '[serve]\nidle_timeout = true\n[vms.a]\n': "idle_timeout must be a number of seconds",
        '[scale_sets.s]\ninstances = true\n': "instances must be a whole number",
        '[serve]\nconsoles_per_user = "20"\n[vms.a]\n': "consoles_per_user must be a whole number from 1 to",
        '[serve]\nconsoles_per_vm = 0\n[vms.a]\n': "consoles_per_vm must be a whole number from 1 to 1000, not 0",
        '[serve]\nconsoles_per_vm = 2.5\n[vms.a]\n': "consoles_per_vm must be a whole number",
        '[vms.a]\nimage = 5\n': "image must be a string",
        'vms = 5\n': "each entry must be a table",
    }
    for text, message in cases.items():
        fleet.write_text(text)
        with pytest.raises(FleetError) as info:
            load_fleet(fleet)
        assert message in str(info.value) and str(fleet) in str(info.value), (text, info.value)
    fleet.write_text('[serve]\nconsoles_per_user = 40\nconsoles_per_vm = 50\n[vms.a]\n')
    caps = load_fleet(fleet)
    assert (caps.consoles_per_user, caps.consoles_per_vm) == (40, 50)
    example = load_fleet(Path(__file__).resolve().parents[2] / "examples" / "fleet.toml")
    assert (example.consoles_per_user, example.consoles_per_vm) == (8, 16)
    assert list(example.vms) == ["web1", "web2", "pool/0", "pool/1"]
    assert example.scale_sets == {"pool": ["pool/0", "pool/1"]}
    assert {u: example.vms["web1"].roles[u] for u in ("alice", "bob", "carol")} == {
        "alice": "owner", "bob": "contributor", "carol": "reader"}


def test_user_add_writes_a_slow_hash_and_keeps_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('# my fleet\n[vms.a]\nroles = { }\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("first-password\n"))
    assert user_add_main([str(fleet), "dana", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("second-password\n"))
    from emulator.cli import main as sercon

    assert sercon(["user", "add", str(fleet), "dana", "--password-stdin"]) == 0  # the CLI path
    text = fleet.read_text()
    assert text.startswith("# my fleet\n") and text.count("[users.dana]") == 1
    stored = load_fleet(fleet).users["dana"].password_hash
    assert stored is not None and stored.startswith("scrypt$32768$8$1$")
    assert verify_password("second-password", stored) and not verify_password("first-password", stored)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert user_add_main([str(fleet), "dana", "--password-stdin"]) == 1
    assert user_add_main([str(fleet), "Bad Name", "--no-password"]) == 1


@pytest.fixture(scope="module")
def small_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    """Two one-VM fleets: console disabled fleet-wide; and a 3 s idle timeout with 2 consoles per VM."""
    base = tmp_path_factory.mktemp("small")
    served = []
    procs = []
    for name, serve in (("off", "console_enabled = false"), ("idle", "idle_timeout = 3\nconsoles_per_vm = 2")):
        home = base / name
        home.mkdir()
        proc, info = start_serve(home, write_fleet(base / f"{name}.toml", serve, ssh_key=CLIENT_KEY_PUBLIC))
        procs.append(proc)
        s = Served(home=home, info=info, passwords={"erin": PASSWORD})
        s.wait_log("solo", b"login: ", timeout=240)
        served.append(s)
    yield served[0], served[1]
    for proc in procs:
        stop_serve(proc)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.guest
def test_fleet_wide_disabled_console(small_fleets: tuple[Served, Served]) -> None:
    off, _ = small_fleets

    async def go() -> None:
        async with Client(off) as c:
            assert await c.login("erin") == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await c.ws("solo")
            assert info.value.status == 409
            async with c.session.get(off.base + "/ws/vms/solo/console") as r:
                assert "disabled for this fleet" in (await r.json())["error"]["message"]
            # Even an owner cannot re-enable a VM's console while the fleet switch is off.
            status, body = await c.call("POST", "/api/vms/solo/console", {"enabled": True})
            assert status == 200 and body["console_enabled"] is False
            status, listing = await c.call("GET", "/api/vms")
            assert listing["console_enabled"] is False
            assert (await c.call("GET", "/api/vms/solo/serial-log?start=-100"))[0] == 200
            assert (await c.call("POST", "/api/vms/solo/nmi"))[0] == 200
    run(go())


@pytest.mark.guest
def test_idle_session_ends(small_fleets: tuple[Served, Served]) -> None:
    _, idle = small_fleets

    async def go() -> None:
        async with Client(idle) as c:
            assert await c.login("erin") == 200
            r = WsReader(await c.ws("solo"))
            assert (await r.frame("hello"))["idle_timeout"] == 3
            closed = await r.frame("closed", timeout=60)
            assert closed["reason"] == "idle" and "press Enter" in closed["message"]
            await r.until_closed()
    run(go())
    assert any(a["event"] == "console_disconnect" and a["reason"] == "idle" for a in idle.audit())


@pytest.mark.guest
def test_console_cap_is_the_fleet_setting(small_fleets: tuple[Served, Served]) -> None:
    """`consoles_per_vm = 2` refuses the third console of the VM (the default would allow 16)."""
    _, idle = small_fleets

    async def go() -> None:
        async with Client(idle) as c:
            assert await c.login("erin") == 200
            readers = [WsReader(await c.ws("solo", mode="read")) for _ in range(2)]
            for r in readers:
                await r.frame("hello")
            error = await WsReader(await c.ws("solo", mode="read")).frame("error")
            assert error["code"] == "too_many_consoles" and "solo has 2 consoles open" in error["message"], error
            for r in readers:
                await r.ws.close()
    run(go())


@pytest.mark.guest
def test_pings_are_not_input(small_fleets: tuple[Served, Served]) -> None:
    """A client that only pings is idle: the 3 s idle timeout still ends its console.

    Before: a ping counted as input, so a forgotten tab kept the console forever."""
    _, idle = small_fleets

    async def go() -> None:
        async with Client(idle) as c:
            assert await c.login("erin") == 200
            r = WsReader(await c.ws("solo", mode="read"))
            await r.frame("hello")
            started = asyncio.get_running_loop().time()
            while not r.closed and asyncio.get_running_loop().time() - started < 30:
                await r.ws.send_json({"type": "ping"})
                try:
                    await r.pump_once(0.5)
                except TimeoutError:
                    pass
                if any(f.get("type") == "closed" for f in r.frames):
                    break
            closed = await r.frame("closed", timeout=1)
            assert closed["reason"] == "idle", closed
    run(go())


def test_demo_passwords_are_refused_beyond_loopback(tmp_path: Path) -> None:
    """`sercon serve examples/fleet.toml --host 0.0.0.0` refuses at once (the demo passwords are public).

    Before: it booted the fleet and served alice/alice-owner-demo to the network."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SERCON_HOME": str(tmp_path), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "emulator.gateway.serve", str(root / "examples" / "fleet.toml"),
                           "--host", "0.0.0.0", "--port", "0", "--ssh-port", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "has a demo password" in proc.stderr and "sercon user add" in proc.stderr, proc.stderr
    assert not (tmp_path / "guests").exists()


@pytest.mark.guest
def test_ssh_public_key_login(small_fleets: tuple[Served, Served]) -> None:
    _, served = small_fleets

    async def go() -> None:
        host_key = asyncssh.read_private_key(str(served.home / "serve" / "ssh_host_key")).convert_to_public()
        conn = await asyncssh.connect("127.0.0.1", served.info["ssh_port"], username="erin+solo",
                                      client_keys=[CLIENT_KEY], known_hosts=([host_key], [], []),
                                      agent_path=None, password=None)
        try:
            process = await conn.create_process(term_type="xterm", encoding=None)
            data = b""
            while b"serial console of solo" not in data:
                chunk = await asyncio.wait_for(process.stdout.read(4096), 60)
                assert chunk, data
                data += chunk
            process.stdin.write(b"\r~.")
            await asyncio.wait_for(process.wait(), 30)
        finally:
            conn.close()
        other = asyncssh.generate_private_key("ssh-ed25519")
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", served.info["ssh_port"], username="erin+solo", client_keys=[other],
                                   known_hosts=([host_key], [], []), agent_path=None, password=None)
    run(go())
    assert any(a["event"] == "login_ok" and a.get("method") == "publickey" and a["user"] == "erin"
               for a in served.audit())
