"""The web console: an aiohttp app with pages, a JSON REST API and a websocket bridge to COM1.

Pages: `/login`, `/` (VMs and scale sets with their state), `/vms/{vm}/console` (xterm.js with a
toolbar: power, SysRq, NMI), `/vms/{vm}/diagnostics` (serial log by byte offset, download,
screenshot). Everything under `/api/` answers JSON, errors included: `{"error": {"status", "code",
"message"}}` with 401 (not logged in), 403 (role, CSRF), 404 (unknown VM), 409 (guest state,
console busy or disabled), 422 (bad input), 429 (login rate limit).

The websocket `/ws/vms/{vm}/console?mode=interactive|read&from=N` carries guest output as binary
frames and takes input as binary frames or JSON text frames `{"type": "input", "data": "..."}`;
the server speaks JSON text frames for everything else: `hello` (the serial-log offset of the
first byte), `error`, `closed` (reason: takeover, idle, guest, server). Input frames over the
2048-character paste cap are refused whole, with an error frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ..errors import SerconError
from .auth import SESSION_LIFETIME, RateLimiter, Session, Sessions
from .bridge import End, Input, Keepalive, ToGuest, run_bridge
from .fleet_host import ACTIONS, PASTE_CAP, AccessError, ConsoleConnection, FleetHost, status_of

STATIC = Path(__file__).resolve().parent / "static"
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"
COOKIE = "sercon_session"
VM_PATTERN = r"{vm:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(?:/[0-9]{1,3})?}"
WS_MAX_MESSAGE = 64 * 1024
REPLAY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("sercon.web")
HOST_KEY = web.AppKey("host", FleetHost)
SESSIONS_KEY = web.AppKey("sessions", Sessions)
LIMITER_KEY = web.AppKey("limiter", RateLimiter)
SOCKETS_KEY = web.AppKey("sockets", set)


def source_of(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote or "unknown")


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"status": status, "code": code, "message": message, **extra}}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors under /api/ (aiohttp's own 404/405 included), security headers everywhere."""
    try:
        response = await handler(request)
    except AccessError as exc:
        response = json_error(exc.status, exc.code, str(exc))
    except SerconError as exc:
        status, code = status_of(exc)
        response = json_error(status, code, str(exc))
    except web.HTTPException as exc:
        if not (request.path.startswith("/api/") or request.path.startswith("/ws/")) or exc.status < 400:
            raise
        reason = {404: "no such endpoint or VM name", 405: "method not allowed here"}.get(exc.status, exc.reason)
        response = json_error(exc.status, "not_found" if exc.status == 404 else "http_error", reason)
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("error handling %s %s", request.method, request.path)
        response = json_error(500, "internal", "internal error in sercon serve (see its log); the guest is unaffected")
    if not response.prepared:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
    return response


class WebConsole:
    def __init__(self, host: FleetHost) -> None:
        self.host = host
        self.sessions = Sessions()
        self.limiter = host.limiter
        self.sockets: set[web.WebSocketResponse] = set()

    # ------------------------------------------------------------ helpers

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def require(self, request: web.Request, state_changing: bool = False) -> Session:
        session = self.session(request)
        if session is None:
            raise AccessError("not logged in: POST /api/login with your user name and password", 401, "unauthenticated")
        if state_changing and not Sessions.csrf_ok(session, request.headers.get("X-CSRF-Token")):
            self.host.audit.write("denied", user=session.user, source=source_of(request), permission="csrf")
            raise AccessError("missing or wrong X-CSRF-Token header (reload the page)", 403, "csrf")
        return session

    @staticmethod
    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        if request.content_type != "application/json":
            raise AccessError("send a JSON body with Content-Type: application/json", 422, "bad_body")
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise AccessError(f"the body is not valid JSON: {exc}", 422, "bad_json") from exc
        if not isinstance(data, dict):
            raise AccessError("the JSON body must be an object", 422, "bad_json")
        return data

    def page(self, name: str) -> web.FileResponse:
        response = web.FileResponse(STATIC / name)
        response.headers["Cache-Control"] = "no-store"
        return response

    # ------------------------------------------------------------ pages

    async def index(self, request: web.Request) -> web.StreamResponse:
        if self.session(request) is None:
            raise web.HTTPFound("/login")
        return self.page("index.html")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self.page("login.html")

    async def vm_page(self, request: web.Request) -> web.StreamResponse:
        if self.session(request) is None:
            raise web.HTTPFound("/login?next=" + request.path)
        self.host.lookup(request.match_info["vm"])
        return self.page("console.html" if request.match_info["page"] == "console" else "diagnostics.html")

    # ------------------------------------------------------------ auth API

    async def login(self, request: web.Request) -> web.StreamResponse:
        source = source_of(request)
        address = source.rsplit(":", 1)[0]
        data = await self.body(request)
        user, password = data.get("user"), data.get("password")
        if (not isinstance(user, str) or not isinstance(password, str) or not user
                or len(user) > 64 or len(password) > 1024):
            raise AccessError('send {"user": "...", "password": "..."}', 422, "bad_login")
        account = self.host.fleet.users.get(user)
        ok, wait = await self.host.passwords.check(password, account.password_hash if account else None,
                                                   address, user)
        if wait > 0:
            self.host.audit.write("login_rate_limited", user=user, source=source)
            response = json_error(429, "rate_limited", f"too many failed logins; try again in {wait:.0f} s",
                                  retry_after=round(wait))
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        if not ok:
            self.host.audit.write("login_failed", user=user, source=source)
            raise AccessError("wrong user name or password", 401, "bad_credentials")
        session = self.sessions.create(user, source)
        self.host.audit.write("login_ok", user=user, source=source)
        response = web.json_response({"user": user, "csrf": session.csrf})
        response.set_cookie(COOKIE, session.token, secure=True, httponly=True, samesite="Strict", path="/")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request, state_changing=True)
        self.sessions.drop(session.token)
        ended = self.host.end_session_consoles(session.token, "logout")
        self.host.audit.write("logout", user=session.user, source=source_of(request), consoles_closed=ended)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        return web.json_response({"user": session.user, "csrf": session.csrf})

    # ------------------------------------------------------------ VM API

    async def vm_json(self, user: str, name: str) -> dict[str, Any]:
        host = self.host
        vm = host.lookup(name)
        role = host.fleet.role(user, vm)
        info = await host.info(vm)
        from .fleet import PERMISSIONS

        return {
            "name": vm.name, "guest": vm.guest_name, "scale_set": vm.scale_set, "image": vm.image,
            "state": info.get("state"), "boot": info.get("boot"), "policy": vm.policy,
            "host": info.get("host") or "local",
            "console_enabled": host.console_open(vm), "console_in_use": bool(info.get("interactive")),
            "log_size": info.get("log_size"), "role": role,
            "permissions": sorted(PERMISSIONS[role]) if role else [],
        }

    async def list_vms(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        fleet = self.host.fleet
        vms = await asyncio.gather(*(self.vm_json(session.user, vm.name) for vm in fleet.visible_vms(session.user)))
        sets = {name: [v for v in members if fleet.vms[v].roles.get(session.user)]
                for name, members in fleet.scale_sets.items()}
        return web.json_response({"user": session.user, "console_enabled": self.host.console_enabled, "vms": vms,
                                  "scale_sets": {k: v for k, v in sets.items() if v}})

    async def get_vm(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        vm = self.host.authorize(session.user, request.match_info["vm"], "diagnostics", source_of(request), "web")
        return web.json_response(await self.vm_json(session.user, vm.name))

    async def post_action(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request, state_changing=True)
        body = await self.body(request)
        result = await self.host.action(session.user, request.match_info["vm"], request.match_info["action"],
                                        source_of(request), "web", body)
        return web.json_response(result)

    async def set_console(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request, state_changing=True)
        vm = self.host.authorize(session.user, request.match_info["vm"], "configure", source_of(request), "web")
        body = await self.body(request)
        if not isinstance(body.get("enabled"), bool):
            raise AccessError('send {"enabled": true} or {"enabled": false}', 422, "bad_body")
        self.host.set_console(vm, body["enabled"], session.user, source_of(request), "web")
        return web.json_response({"vm": vm.name, "console_enabled": self.host.console_open(vm)})

    @staticmethod
    def int_param(request: web.Request, name: str, default: int | None) -> int | None:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise AccessError(f"{name} must be a whole number of bytes (negative: from the end), not {raw[:40]!r}",
                              422, "bad_offset") from exc

    async def serial_log(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        vm = self.host.authorize(session.user, request.match_info["vm"], "diagnostics", source_of(request), "web")
        start = self.int_param(request, "start", 0) or 0
        length = self.int_param(request, "length", None)
        chunk = self.host.read_log(vm, start, length)
        if request.match_info.get("download"):
            return web.Response(body=chunk.data, content_type="application/octet-stream", headers={
                "Content-Disposition": f'attachment; filename="{vm.guest_name}-serial.log"'})
        return web.json_response({
            "vm": vm.name, "start": chunk.start, "next": chunk.start + len(chunk.data), "size": chunk.size,
            "length": len(chunk.data), "text": chunk.data.decode("utf-8", errors="replace"),
        })

    async def screenshot(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        vm = self.host.authorize(session.user, request.match_info["vm"], "diagnostics", source_of(request), "web")
        png = await self.host.screenshot(vm)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------ websocket bridge

    async def console_ws(self, request: web.Request) -> web.StreamResponse:
        session = self.require(request)
        source = source_of(request)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            self.host.audit.write("denied", user=session.user, source=source, permission="origin", origin=origin[:200])
            raise AccessError(f"websocket from a foreign origin ({origin[:100]}) refused", 403, "origin")
        mode = request.query.get("mode", "interactive")
        if mode not in ("interactive", "read"):
            raise AccessError("mode must be interactive or read", 422, "bad_mode")
        vm = self.host.authorize(session.user, request.match_info["vm"], "console", source, "web")
        self.host.check_console_enabled(vm, session.user, source, "web")
        from_offset = self.int_param(request, "from", -REPLAY_BYTES)
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=WS_MAX_MESSAGE, compress=False)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            try:
                conn = await self.host.open_console(vm.name, mode, session.user, source, "web", from_offset,
                                                    session=session.token)
            except SerconError as exc:
                status, code = status_of(exc)
                await ws.send_json({"type": "error", "status": status, "code": code, "message": str(exc),
                                    "fatal": True})
                await ws.close(code=4000 + status, message=code.encode())
                return ws
            await self.bridge(ws, conn, session, source)
        finally:
            self.sockets.discard(ws)
        return ws

    async def bridge(self, ws: web.WebSocketResponse, conn: ConsoleConnection, session: Session, source: str) -> None:
        idle = self.host.fleet.idle_timeout
        await ws.send_json({"type": "hello", "vm": conn.vm.name, "mode": conn.mode, "offset": conn.start,
                            "took_over": conn.took_over, "paste_cap": PASTE_CAP, "idle_timeout": idle})

        async def tell(text: str) -> None:
            code = "read_only" if "read-only" in text else "notice"
            await ws.send_json({"type": "error" if code == "read_only" else "notice", "code": code, "message": text})

        inputs = _WsInput(self, ws)
        reason = "connection lost"
        try:
            reason, _ = await run_bridge(self.host, conn, inputs, show=ws.send_bytes, tell=tell, source=source,
                                         via="web", expires_at=session.created + SESSION_LIFETIME)
        except (ConnectionError, asyncio.CancelledError):
            reason = conn.ended_by_server or "connection lost"
        finally:
            if reason == "expired":
                self.sessions.drop(session.token)
            self.host.console_closed(conn, session.user, source, "web", reason)
        if not ws.closed:
            messages = {
                "takeover": "The serial console connection was closed: another user took over the console. "
                            "Your session in the guest continues. To reconnect, press Enter.",
                "idle": f"The serial console connection was closed after {idle:.0f} s without input. "
                        "To reconnect, press Enter.",
                "guest": "The serial console connection was closed by the guest's owner. To reconnect, press Enter.",
                "stopped": "The serial console connection was closed: the guest was shut down.",
                "dropped": "The serial console connection was closed: it fell too far behind the guest's output. "
                           "To reconnect, press Enter.",
                "disabled": "The serial console connection was closed: an owner disabled the serial console of "
                            f"{conn.vm.name}.",
                "logout": "The serial console connection was closed: you logged out.",
                "expired": "The serial console connection was closed: your login session expired. Log in again.",
            }
            try:
                await ws.send_json({"type": "closed", "reason": reason,
                                    "message": messages.get(reason, "The serial console connection was closed.")})
                await ws.close(code=4001 if reason == "takeover" else 1000)
            except ConnectionError:
                pass

    async def input_items(self, ws: web.WebSocketResponse, msg: Any) -> list[Input]:
        """Bridge items from one websocket message; bad frames get an error frame and send nothing."""
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return [End("client")]
        if msg.type == WSMsgType.ERROR:
            return [End("protocol error")]
        if msg.type == WSMsgType.BINARY:
            data: bytes = msg.data
            text_len = len(data)
        elif msg.type == WSMsgType.TEXT:
            try:
                frame = json.loads(msg.data)
            except ValueError:
                await ws.send_json({"type": "error", "code": "bad_json",
                                    "message": 'text frames must be JSON, e.g. {"type": "input", "data": "ls\\r"}'})
                return []
            if not isinstance(frame, dict) or frame.get("type") not in ("input", "ping"):
                await ws.send_json({"type": "error", "code": "bad_frame",
                                    "message": 'unknown frame; send {"type": "input", "data": "..."} '
                                               'or {"type": "ping"}'})
                return []
            if frame["type"] == "ping":
                await ws.send_json({"type": "pong"})
                return [Keepalive()]
            if not isinstance(frame.get("data"), str):
                await ws.send_json({"type": "error", "code": "bad_frame", "message": "input data must be a string"})
                return []
            text_len = len(frame["data"])
            data = frame["data"].encode("utf-8", errors="replace")
        else:
            return []
        if text_len > PASTE_CAP:
            await ws.send_json({"type": "error", "code": "paste_too_long",
                                "message": f"input of {text_len} characters exceeds the {PASTE_CAP}-character paste "
                                           "cap; nothing was sent"})
            return []
        return [ToGuest(data)] if data else []

    # ------------------------------------------------------------ static

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        files = {
            "xterm.js": NODE_MODULES / "@xterm/xterm/lib/xterm.js",
            "xterm.css": NODE_MODULES / "@xterm/xterm/css/xterm.css",
            "addon-fit.js": NODE_MODULES / "@xterm/addon-fit/lib/addon-fit.js",
        }
        path = files.get(request.match_info["file"])
        if path is None:
            raise web.HTTPNotFound()
        if not path.is_file():
            return web.Response(status=503,
                                text=f"// {path.name} is missing: run `make setup` (npm ci in emulator/gateway)",
                                content_type="text/plain")
        return web.FileResponse(path)

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"server shutting down")


class _WsInput:
    """A websocket's messages as bridge items (aiohttp's receive() keeps an unread message when
    cancelled)."""

    def __init__(self, console: WebConsole, ws: web.WebSocketResponse) -> None:
        self.console = console
        self.ws = ws

    async def next(self) -> list[Input]:
        return await self.console.input_items(self.ws, await self.ws.receive())


def make_app(host: FleetHost) -> web.Application:
    console = WebConsole(host)
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024)
    app[HOST_KEY] = host
    app[SESSIONS_KEY] = console.sessions
    app[LIMITER_KEY] = console.limiter
    app[SOCKETS_KEY] = console.sockets
    r = app.router
    r.add_get("/", console.index)
    r.add_get("/login", console.login_page)
    r.add_get("/vms/" + VM_PATTERN + "/{page:console|diagnostics}", console.vm_page)
    r.add_post("/api/login", console.login)
    r.add_post("/api/logout", console.logout)
    r.add_get("/api/session", console.whoami)
    r.add_get("/api/vms", console.list_vms)
    r.add_get("/api/vms/" + VM_PATTERN, console.get_vm)
    r.add_post("/api/vms/" + VM_PATTERN + "/{action:" + "|".join(ACTIONS) + "}", console.post_action)
    r.add_post("/api/vms/" + VM_PATTERN + "/console", console.set_console)
    r.add_get("/api/vms/" + VM_PATTERN + "/serial-log", console.serial_log)
    r.add_get("/api/vms/" + VM_PATTERN + "/serial-log/{download:download}", console.serial_log)
    r.add_get("/api/vms/" + VM_PATTERN + "/screenshot", console.screenshot)
    r.add_get("/ws/vms/" + VM_PATTERN + "/console", console.console_ws)
    r.add_get("/static/vendor/{file}", console.vendor)
    r.add_static("/static/", STATIC, follow_symlinks=False)

    async def on_shutdown(app: web.Application) -> None:
        await console.close_all()

    app.on_shutdown.append(on_shutdown)
    return app
