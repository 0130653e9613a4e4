"""Bad input gets clear errors and leaves the guest and its serial log intact.

Malformed websocket messages and raw frames, malformed JSON bodies, oversized pastes, unknown VM
names, path traversal in names and offsets, wrong passwords (rate limited).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import ssl
from typing import Any

import aiohttp
import pytest
from yarl import URL

from .client import Client, Served, WsReader
from .test_takeover import run_cmd, shell

pytestmark = [pytest.mark.guest]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def guest_still_fine(served: Served, client: Client, vm: str) -> None:
    reader = WsReader(await client.ws(vm))
    await reader.frame("hello")
    await shell(reader)
    token = secrets.token_hex(4)
    await run_cmd(reader, f"echo alive-{token}", f"alive-{token}".encode())
    await reader.ws.close()


def test_malformed_websocket_messages(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            log_before = served.log_bytes("pool/0")
            r = WsReader(await c.ws("pool/0"))
            await r.frame("hello")
            await r.ws.send_str("this is not json")
            assert (await r.frame("error"))["code"] == "bad_json"
            await r.ws.send_str('{"type": "launch-missiles"}')
            assert (await r.frame("error"))["code"] == "bad_frame"
            await r.ws.send_str('["input", "x"]')
            assert (await r.frame("error"))["code"] == "bad_frame"
            await r.ws.send_str('{"type": "input", "data": 42}')
            assert (await r.frame("error"))["code"] == "bad_frame"
            # Over the 2048-character paste cap: refused whole, nothing reaches the guest.
            marker = "PASTE" + secrets.token_hex(4)
            await r.ws.send_json({"type": "input", "data": "echo " + marker + "x" * 3000})
            error = await r.frame("error")
            assert error["code"] == "paste_too_long" and "2048" in error["message"]
            await r.ws.send_bytes(b"y" * 2049)
            assert (await r.frame("error"))["code"] == "paste_too_long"
            # A single message larger than the server takes ends the connection (1009), not the guest.
            await r.ws.send_bytes(b"z" * 200_000)
            await r.until_closed()
            # 1009 (message too big) when the close frame arrives before the client stops writing, else 1006.
            assert r.ws.close_code in (1009, 1006)
            await guest_still_fine(served, c, "pool/0")
            log_after = served.log_bytes("pool/0")
            assert log_after.startswith(log_before)
            assert marker.encode() not in log_after and b"z" * 100 not in log_after and b"y" * 100 not in log_after
    run(go())


def test_garbage_websocket_frames_on_the_wire(served: Served) -> None:
    async def login_cookie() -> str:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            cookie = c.session.cookie_jar.filter_cookies(URL(served.base))["sercon_session"]
            return cookie.value

    token = run(login_cookie())
    ctx = served.ssl_context()
    for garbage in (b"\x8f\x80\x00\x00\x00\x00",           # reserved opcode 0xF
                    b"\xf1\x80\x00\x00\x00\x00",           # reserved bits set
                    b"\x80\x80\x00\x00\x00\x00",           # a continuation with nothing to continue
                    b"\x81\x05hello"):                     # unmasked text (aiohttp tolerates it): not JSON
        with socket.create_connection(("127.0.0.1", served.info["port"]), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            key = base64.b64encode(os.urandom(16)).decode()
            tls.sendall((f"GET /ws/vms/pool/0/console?mode=read HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         f"Sec-WebSocket-Version: 13\r\nCookie: sercon_session={token}\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head[:200]
            tls.sendall(garbage)
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
                    if b'"bad_json"' in data:
                        break
            except (ConnectionResetError, ssl.SSLError, TimeoutError):
                pass
            # The server answers with a close frame (opcode 8) and hangs up, or explains the bad message.
            assert b"\x88" in data or b'"bad_json"' in data, data[-100:]

    async def after() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            await guest_still_fine(served, c, "pool/0")
    run(after())


def test_malformed_rest_bodies(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("bob") == 200
            status, err = await c.call("POST", "/api/vms/pool/0/sysrq", raw=b"{not json",
                                       headers={"Content-Type": "application/json"})
            assert status == 422 and err["error"]["code"] == "bad_json"
            status, err = await c.call("POST", "/api/vms/pool/0/sysrq", raw=b"keys=h",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert status == 422 and "application/json" in err["error"]["message"]
            for body in ({"keys": 5}, {"keys": ""}, {"keys": "h" * 50 + "!"}, {}):
                status, err = await c.call("POST", "/api/vms/pool/0/sysrq", body)
                assert status == 422, (body, err)
            status, err = await c.call("POST", "/api/vms/pool/0/sysrq", [1, 2])
            assert status == 422
            status, err = await c.call("POST", "/api/vms/pool/0/sysrq", raw=b"{" * 100_000,
                                       headers={"Content-Type": "application/json"})
            assert status == 413
            status, err = await c.call("GET", "/api/vms/pool/0/serial-log?start=abc")
            assert status == 422 and err["error"]["code"] == "bad_offset"
            status, body = await c.call("GET", "/api/vms/pool/0/serial-log?start=-50")
            assert status == 200 and body["length"] == 50 and body["next"] == body["size"]
            status, body = await c.call("GET", "/api/vms/pool/0/serial-log?start=999999999999")
            assert status == 200 and body["length"] == 0
            status, err = await c.call("GET", "/api/login")
            assert status == 405
            async with c.session.post(served.base + "/api/login", data=b"user=x") as r:
                assert r.status == 422
    run(go())


def test_unknown_vm_names_and_path_traversal(served: Served) -> None:
    async def go() -> None:
        async with Client(served) as c:
            assert await c.login("alice") == 200
            for name in ("nope", "pool/7", "pool/0/0", "web1.", "pool-0"):
                status, err = await c.call("POST", f"/api/vms/{name}/nmi")
                assert status == 404 and "error" in err, (name, status, err)
                status, err = await c.call("GET", f"/api/vms/{name}/serial-log")
                assert status == 404, name
            for raw_path in ("/api/vms/..%2F..%2Fetc%2Fpasswd/serial-log", "/api/vms/../../etc/passwd",
                             "/api/vms/%2e%2e/serial-log", "/api/vms/web1%2F..%2F..%2Fguests/serial-log",
                             "/static/..%2F..%2Fserve.py", "/static/../fleet.py", "/api/vms/" + "a" * 5000 + "/nmi",
                             "/vms/%2e%2e%2fweb1/console", "/static/vendor/..%2F..%2Fpackage.json"):
                async with c.session.request("POST" if raw_path.endswith("nmi") else "GET",
                                             URL(served.base + raw_path, encoded=True),
                                             headers={"X-CSRF-Token": c.csrf or ""}) as r:
                    body = await r.read()
                    assert r.status in (400, 403, 404), (raw_path, r.status)
                    assert b"root:" not in body and b"import " not in body and b"dependencies" not in body
                    if raw_path.startswith("/api/"):
                        assert r.content_type == "application/json", raw_path
            try:
                await c.ws("../web1")
                raise AssertionError("websocket accepted for ../web1")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status in (400, 404)
    run(go())


def test_wrong_passwords_are_rate_limited(served: Served) -> None:
    """From 127.0.0.2: carol is locked out there after 5 failures; carol from 127.0.0.1 is not."""

    async def go() -> None:
        connector = aiohttp.TCPConnector(ssl=served.ssl_context(), local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(5):
                async with s.post(served.base + "/api/login", json={"user": "carol", "password": "guess"}) as r:
                    assert r.status == 401
                    assert (await r.json())["error"]["message"] == "wrong user name or password"
            async with s.post(served.base + "/api/login",
                              json={"user": "carol", "password": served.passwords["carol"]}) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0
                assert "too many failed logins" in (await r.json())["error"]["message"]
            # Guessing many names from one address hits the per-address limit.
            statuses = []
            for i in range(20):
                async with s.post(served.base + "/api/login", json={"user": f"nobody{i}", "password": "x"}) as r:
                    statuses.append(r.status)
            assert statuses[-1] == 429 and 401 in statuses
        async with Client(served) as c:
            assert await c.login("carol") == 200
    run(go())
    limited = [a for a in served.audit() if a["event"] == "login_rate_limited"]
    assert limited and limited[0]["user"] == "carol" and limited[0]["source"].startswith("127.0.0.2:")
