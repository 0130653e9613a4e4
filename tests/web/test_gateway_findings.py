"""The gateway findings of issue 9, each with a test that failed on the code before the fix.

Run against the shared `served` fleet (examples/fleet.toml, four real guests) with real TLS, real
websockets, real asyncssh and OpenSSH clients. How each was seen to fail is in its docstring.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulator.gateway.fleet import CONSOLES_PER_USER

from .client import Client, Served, WsReader
from .test_ssh import Reader, connect
from .test_takeover import run_cmd, shell

pytestmark = [pytest.mark.guest]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_wrong_logins_are_counted_before_hashing(served: Served) -> None:
    """50 concurrent wrong logins for one user: at most 10 password checks, the rest 429 at once.

    Before: the limiter counted failures after hashing, so all 50 were checked (50 x 401)."""

    async def go() -> list[int]:
        connector = aiohttp.TCPConnector(ssl=served.ssl_context(), local_addr=("127.0.0.3", 0), limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:
            async def attempt(i: int) -> int:
                async with s.post(served.base + "/api/login", json={"user": "mallory", "password": f"g{i}"}) as r:
                    return r.status
            return list(await asyncio.gather(*(attempt(i) for i in range(50))))

    statuses = run(go())
    checked = [a for a in served.audit() if a["event"] == "login_failed" and a["user"] == "mallory"]
    assert len(checked) <= 10, f"{len(checked)} password checks for 50 concurrent attempts"
    assert statuses.count(401) == len(checked) and statuses.count(429) == 50 - len(checked), statuses
    # 429s cost an attacker nothing: they must not fill the audit log (throttled, counted later).
    limited = [a for a in served.audit() if a["event"] == "login_rate_limited" and a["user"] == "mallory"]
    assert 1 <= len(limited) <= 3, len(limited)


def test_logout_closes_that_sessions_consoles(served: Served) -> None:
    """Before: logout dropped the cookie but the open console went on working."""

    async def go() -> None:
        async with Client(served) as c, Client(served) as other:
            assert await c.login("bob") == 200 and await other.login("bob") == 200
            mine = WsReader(await c.ws("web1", mode="read"))
            theirs = WsReader(await other.ws("web1", mode="read"))
            await mine.frame("hello")
            await theirs.frame("hello")
            status, _ = await c.call("POST", "/api/logout")
            assert status == 200
            closed = await mine.frame("closed")
            assert closed["reason"] == "logout", closed
            await mine.until_closed()
            # Another session of the same user is not touched.
            with pytest.raises(AssertionError, match="no 'closed' frame"):
                await theirs.frame("closed", timeout=2)
    run(go())
    assert any(a["event"] == "console_disconnect" and a.get("reason") == "logout" for a in served.audit())


def test_consoles_per_user_are_capped(served: Served) -> None:
    """Before: a user could open any number of consoles (each a socket and a task in the owner)."""

    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("alice") == 200
            readers = []
            for _ in range(CONSOLES_PER_USER):
                r = WsReader(await c.ws("pool/0", mode="read"))
                await r.frame("hello")
                readers.append(r)
            extra = WsReader(await c.ws("pool/0", mode="read"))
            error = await extra.frame("error")
            assert error["code"] == "too_many_consoles" and error["status"] == 429, error
            for r in readers:
                await r.ws.close()
            # Closing them frees the slots.
            again = WsReader(await c.ws("pool/0", mode="read"))
            await again.frame("hello")
            await again.ws.close()
    run(go())


def test_replay_is_capped_and_reported(served: Served) -> None:
    """`?from=0` replays at most 256 KiB (the newest), and the hello says from where.

    Before: the whole log was read and queued in one go (hello offset 0, megabytes queued)."""

    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("alice") == 200
            r = WsReader(await c.ws("pool/1"))
            await r.frame("hello")
            await shell(r)
            await run_cmd(r, "seq 1 60000 | tail -c 1 >/dev/null; seq 100000 160000; echo made-$((2*3))", b"made-6")
            await r.ws.close()
            size = len(served.log_bytes("pool/1"))
            assert size > 300 * 1024
            replay = WsReader(await c.ws("pool/1", mode="read", from_offset=0))
            hello = await replay.frame("hello")
            assert hello["offset"] >= size - 256 * 1024 - 4096, (hello, size)
            await replay.ws.close()
    run(go())


def test_ssh_reconnect_is_authorized_again(served: Served) -> None:
    """After a takeover, pressing Enter reconnects only if the console is still allowed.

    Before: the reconnect skipped the role and console-switch checks (it reconnected to a disabled console)."""

    async def go() -> None:
        async with await connect(served, "bob+web1") as conn:
            process = await conn.create_process(term_type="xterm", encoding=None)
            r = Reader(process)
            await r.expect(b"serial console of web1")
            async with Client(served) as alice:
                assert await alice.login("alice") == 200
                ws = WsReader(await alice.ws("web1"))
                await ws.frame("hello")
                at = await r.expect(b"To reconnect, press Enter")
                status, body = await alice.call("POST", "/api/vms/web1/console", {"enabled": False})
                assert status == 200 and body["console_enabled"] is False
                try:
                    process.stdin.write(b"\r")
                    result = await asyncio.wait_for(process.wait(), 30)
                    assert result.exit_status == 1
                    assert b"reconnected" not in r.data[at:] + (result.stdout or b"")
                    assert b"console is disabled" in (result.stderr or b""), result
                finally:
                    await alice.call("POST", "/api/vms/web1/console", {"enabled": True})
    run(go())


def test_sysrq_sequences_are_capped(served: Served) -> None:
    """At most 32 keys a request. Before: up to 64 KiB of keys, each a BREAK, 0.1 s apart."""

    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            status, body = await c.call("POST", "/api/vms/web1/sysrq", {"keys": "9" * 33})
            assert status == 422 and "at most 32 keys" in body["error"]["message"], body
    run(go())


def test_sysrq_stops_when_its_request_ends(served: Served) -> None:
    """A client that gives up on a SysRq request stops its sequence. Before: the BREAKs went on."""
    events = served.guest_folder("web1") / "events.jsonl"

    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            hdrs = {"X-CSRF-Token": c.csrf or ""}
            with pytest.raises(TimeoutError):
                async with c.session.post(served.base + "/api/vms/web1/sysrq", json={"keys": "9" * 32},
                                          headers=hdrs, timeout=aiohttp.ClientTimeout(total=1.0)):
                    pass
    start = time.time()
    run(go())
    deadline = time.monotonic() + 30
    while True:
        done = [e for e in map(json.loads, events.read_text().splitlines())
                if e["event"] == "sysrq" and e["time"] >= start]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done and done[0].get("cancelled") is True and len(done[0]["keys"]) < 32, done


def openssh() -> str:
    path = shutil.which("ssh")
    if path is None:
        pytest.fail("the OpenSSH client is missing: apt-get install openssh-client (in the Makefile's APT_PACKAGES)")
    return path


@pytest.mark.parametrize("option", ["KexAlgorithms=diffie-hellman-group14-sha1",
                                    "KexAlgorithms=diffie-hellman-group-exchange-sha1",
                                    "MACs=hmac-sha1", "Ciphers=aes128-cbc",
                                    "Ciphers=chacha20-poly1305@openssh.com", "HostKeyAlgorithms=ssh-rsa"])
def test_ssh_offers_no_sha1_or_cbc(served: Served, option: str) -> None:
    """A real OpenSSH client that offers only a SHA-1 (or CBC, or chacha20-poly1305) algorithm finds no match.

    Before: asyncssh's defaults still offered SHA-1 key exchange and MACs, so those connected.
    chacha20-poly1305 is left out for speed (ENCRYPTION_ALGS in emulator/gateway/ssh.py)."""
    extra = ["-o", "Ciphers=aes128-ctr"] if option.startswith("MACs") else []
    proc = subprocess.run(
        [openssh(), "-p", str(served.info["ssh_port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", option, *extra,
         "bob+web1@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "no matching" in proc.stderr, proc.stderr


def test_ssh_modern_algorithms_still_connect(served: Served) -> None:
    proc = subprocess.run(
        [openssh(), "-p", str(served.info["ssh_port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "bob+web1@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    # BatchMode: no password prompt, so authentication fails, after the key exchange succeeded.
    assert "Permission denied" in proc.stderr, proc.stderr


NOBODY_PROBE = r"""
import json, socket, ssl, sys, urllib.request, urllib.error
port, ssh_port, folders = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
out = {}
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # a negative test: whatever the certificate, nothing is served
for path in ("/api/vms", "/api/vms/web1/serial-log?start=0", "/api/vms/web1/screenshot"):
    try:
        urllib.request.urlopen("https://127.0.0.1:%d%s" % (port, path), context=ctx, timeout=20)
        out[path] = "200"
    except urllib.error.HTTPError as exc:
        out[path] = str(exc.code)
with socket.create_connection(("127.0.0.1", ssh_port), timeout=20) as s:
    out["ssh_banner"] = s.recv(100).decode(errors="replace").strip()
for folder in folders:
    for name in ("serial.log", "spec.json", "owner.json"):
        try:
            open(folder + "/" + name, "rb").read()
            out[folder + "/" + name] = "read"
        except OSError as exc:
            out[folder + "/" + name] = type(exc).__name__
    for name in ("console.sock", "control.sock"):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(folder + "/" + name)
            out[folder + "/" + name] = "connected"
        except OSError as exc:
            out[folder + "/" + name] = type(exc).__name__
print(json.dumps(out))
"""


def test_another_local_user_gets_nothing_without_credentials(served: Served) -> None:
    """As `nobody`: the gateway answers 401 without a login, the guests' files and sockets are closed,
    and no guest owner listens on any TCP port (the fleet asked for no RFC 2217 port).

    Before: every fleet guest had an RFC 2217 port in a world-readable owner.json, which gave this
    account a root shell with no login and no audit record."""
    import pwd

    if os.getuid() != 0:
        pytest.skip("switching to the nobody account needs root")
    nobody = pwd.getpwnam("nobody")
    folders = [str(served.guest_folder(vm)) for vm in served.info["vms"]]
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
         "/usr/bin/python3", "-c", NOBODY_PROBE, str(served.info["port"]), str(served.info["ssh_port"]), *folders],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert all(seen[p] == "401" for p in ("/api/vms", "/api/vms/web1/serial-log?start=0",
                                          "/api/vms/web1/screenshot")), seen
    assert seen["ssh_banner"].startswith("SSH-2.0"), seen  # it may knock; it still needs a login
    for folder in folders:
        for name in ("serial.log", "spec.json", "owner.json", "console.sock", "control.sock"):
            assert seen[f"{folder}/{name}"] == "PermissionError", (name, seen)
    for folder in folders:
        owner = json.loads((Path(folder) / "owner.json").read_text())
        assert owner["rfc2217_port"] is None, owner
