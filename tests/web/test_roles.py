"""The role matrix over real HTTPS: who may see, type and act on which VM; the console switch; the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from .client import Client, Served, WsReader

pytestmark = [pytest.mark.guest]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def ws_status(client: Client, vm: str, mode: str = "interactive") -> int:
    """HTTP status of a refused websocket upgrade (101 if it was accepted)."""
    try:
        ws = await client.ws(vm, mode)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


def test_unauthenticated_gets_401_and_the_login_page(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert (await c.call("GET", "/api/vms"))[0] == 401
            status, body = await c.call("POST", "/api/vms/web1/reset")
            assert status == 401 and body["error"]["code"] == "unauthenticated"
            assert (await c.call("GET", "/api/vms/web1/serial-log"))[0] == 401
            assert await ws_status(c, "web1") == 401
            async with c.session.get(served.base + "/", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/login"
            async with c.session.get(served.base + "/vms/web1/console", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"].startswith("/login")
            async with c.session.get(served.base + "/login") as r:
                assert r.status == 200 and "Log in" in await r.text()
    run(go())


def test_reader_gets_diagnostics_but_no_console_and_no_actions(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("carol") == 200
            status, body = await c.call("GET", "/api/vms/web1/serial-log?start=0&length=4096")
            assert status == 200 and body["start"] == 0 and "Linux version" in body["text"]
            status, png = await c.call("GET", "/api/vms/web1/screenshot")
            assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
            assert await ws_status(c, "web1") == 403
            assert await ws_status(c, "web1", "read") == 403
            for action, body_ in (("restart", None), ("reset", None), ("power-cycle", None), ("nmi", None),
                                  ("sysrq", {"keys": "h"})):
                status, err = await c.call("POST", f"/api/vms/web1/{action}", body_)
                assert status == 403, (action, status, err)
                assert "reader" in err["error"]["message"]
            status, err = await c.call("POST", "/api/vms/web1/console", {"enabled": False})
            assert status == 403
            status, listing = await c.call("GET", "/api/vms")
            assert [v["name"] for v in listing["vms"]] == ["web1", "web2"]
            assert all(v["role"] == "reader" and v["permissions"] == ["diagnostics"] for v in listing["vms"])
    run(go())
    denied = [a for a in served.audit() if a["event"] == "denied" and a["user"] == "carol"]
    assert {a["permission"] for a in denied} >= {"console", "power", "nmi", "sysrq", "configure"}
    assert all(a["vm"] == "web1" and a["source"].startswith("127.0.0.1:") for a in denied)


def test_user_without_a_role_gets_403(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            for method, path in (("GET", "/api/vms/web2"), ("GET", "/api/vms/web2/serial-log"),
                                 ("GET", "/api/vms/web2/screenshot"), ("POST", "/api/vms/web2/nmi"),
                                 ("POST", "/api/vms/web2/reset")):
                status, err = await c.call(method, path)
                assert status == 403 and err["error"]["code"] == "no_role", (path, err)
            assert await ws_status(c, "web2") == 403
    run(go())


def test_contributor_acts_on_its_vms_only(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            size = len(served.log_bytes("pool/0"))
            status, result = await c.call("POST", "/api/vms/pool/0/nmi")
            assert status == 200 and result["action"] == "nmi"
            served.wait_log("pool/0", b"NMI received", since=size)
            status, result = await c.call("POST", "/api/vms/pool/0/sysrq", {"keys": "h"})
            assert status == 200 and result["keys"] == "h"
            served.wait_log("pool/0", b"sysrq: HELP", since=size)
            status, err = await c.call("POST", "/api/vms/pool/0/sysrq", {"keys": "h!"})
            assert status == 422 and "invalid SysRq key" in err["error"]["message"]
            # Contributors cannot switch the console off: that is the owner's.
            status, err = await c.call("POST", "/api/vms/pool/0/console", {"enabled": False})
            assert status == 403 and "owner" in err["error"]["message"]
            assert await ws_status(c, "pool/1", "read") == 101
            assert (await c.call("POST", "/api/vms/web2/nmi"))[0] == 403
            # CSRF: a state-changing request without the session's token is refused.
            status, err = await c.call("POST", "/api/vms/pool/0/nmi", csrf=False)
            assert status == 403 and err["error"]["code"] == "csrf"
            status, err = await c.call("POST", "/api/vms/pool/0/nmi", csrf=False, headers={"X-CSRF-Token": "forged"})
            assert status == 403
    run(go())
    actions = [a for a in served.audit() if a["event"] == "action" and a["user"] == "bob" and a["vm"] == "pool/0"]
    assert [(a["action"], a["ok"]) for a in actions][-3:] == [("nmi", True), ("sysrq", True), ("sysrq", False)]
    assert all(a["source"].startswith("127.0.0.1:") and a["time"] > 0 and a["via"] == "web" for a in actions)


def test_owner_disables_and_enables_a_console(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as owner, Client(served) as bob:
            assert await owner.login("alice") == 200 and await bob.login("bob") == 200
            watching = WsReader(await bob.ws("pool/1", "read"))
            await watching.frame("hello")
            status, body = await owner.call("POST", "/api/vms/pool/1/console", {"enabled": False})
            assert status == 200 and body["console_enabled"] is False
            # Open sessions end, with the reason.
            closed = await watching.frame("closed")
            assert closed["reason"] == "disabled" and "disabled the serial console" in closed["message"]
            await watching.until_closed()
            try:
                ws = await bob.ws("pool/1")
                raise AssertionError("the websocket should have been refused")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 409
            async with bob.session.get(served.base + "/ws/vms/pool/1/console") as r:
                body = await r.json()
                assert r.status == 409 and "console is disabled for pool/1" in body["error"]["message"]
            # Boot diagnostics stay available.
            assert (await bob.call("GET", "/api/vms/pool/1/serial-log?start=-100"))[0] == 200
            status, listing = await bob.call("GET", "/api/vms")
            assert {v["name"]: v["console_enabled"] for v in listing["vms"]}["pool/1"] is False
            status, body = await owner.call("POST", "/api/vms/pool/1/console", {"enabled": True})
            assert status == 200 and body["console_enabled"] is True
            ws = await bob.ws("pool/1")
            await ws.close()
            status, _ = await owner.call("POST", "/api/vms/pool/1/console", {"enabled": "no"})
            assert status == 422
    run(go())
    events = [a for a in served.audit()
              if a.get("vm") == "pool/1" and a["event"] in ("console_enabled", "console_refused")]
    assert [e["event"] for e in events][:3] == ["console_enabled", "console_refused", "console_refused"]
    assert events[0]["user"] == "alice" and events[0]["enabled"] is False


def test_login_audit_and_cookie_flags(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            async with c.session.post(served.base + "/api/login",
                                      json={"user": "alice", "password": served.passwords["alice"]}) as r:
                assert r.status == 200
                cookie = r.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            assert await c.login("alice", "wrong-password") == 401
    run(go())
    audit = served.audit()
    assert any(a["event"] == "login_ok" and a["user"] == "alice" for a in audit)
    failed = [a for a in audit if a["event"] == "login_failed" and a["user"] == "alice"]
    assert failed and failed[-1]["source"].startswith("127.0.0.1:") and "iso" in failed[-1]


def test_contributor_restarts_gracefully_and_the_console_follows(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            viewer = WsReader(await c.ws("pool/1", "read"))
            await viewer.frame("hello")
            since = len(viewer.data)
            status, result = await c.call("POST", "/api/vms/pool/1/restart", {"timeout": 60})
            assert status == 200 and result["action"] == "restart", result
            at = await viewer.expect(b"Linux version", since=since, timeout=120)
            await viewer.expect(b"login:", since=at, timeout=120)
            status, err = await c.call("POST", "/api/vms/pool/1/restart", {"timeout": "soon"})
            assert status == 422 and err["error"]["code"] == "bad_timeout"
            await viewer.ws.close()
    run(go())
    restarts = [a for a in served.audit() if a["event"] == "action" and a["action"] == "restart"]
    assert restarts and restarts[-1]["ok"] and restarts[-1]["vm"] == "pool/1"
