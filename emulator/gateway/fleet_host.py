"""The fleet's guests as the front ends see them: start/attach, authorization, actions, consoles.

`FleetHost` is shared by the web server and the SSH server, so both apply the same roles, the
same console switch and write the same audit records. It talks to each guest's owner over its
control and console sockets (asyncio, no threads), and reads serial logs straight from the
guest folder.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import (
    ActionFailed,
    ConsoleBusy,
    ControlError,
    GuestNotRunning,
    InvalidSysRqKey,
    SerconError,
    UnknownGuest,
)
from ..images import resolve_image
from ..machine import Machine
from ..operations import Operation, gateway_operations, lookup
from ..owner import SYSRQ_MAX_KEYS
from ..pacing import BurstPacer
from ..protocol import Frame, FrameDecoder, decode_reply, make_hello
from ..serial_log import LogChunk, read_log
from ..sysrq import parse_keys
from .audit import AuditLog
from .auth import PasswordChecker, RateLimiter
from .fleet import Fleet, Vm

_EXAMPLES = {"sysrq": '{"keys": "h"} (one key) or {"keys": "reisub"} (a sequence)',
             "restart": '{"timeout": SECONDS} from 1 to 600 (default 60)'}
#: The Azure console's paste cap.
PASTE_CAP = 2048
#: Largest serial-log page one request returns.
LOG_PAGE_MAX = 1024 * 1024
#: Most console output a (re)connecting client gets replayed; older output is in the serial log API.
REPLAY_MAX = 256 * 1024
#: The actions the gateway offers (`POST /api/vms/{vm}/{name}`), from the operations table.
ACTIONS: dict[str, Operation] = gateway_operations()


class AccessError(SerconError):
    """A request the front end refuses; `status` is the HTTP status, `code` a stable short name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


def status_of(exc: SerconError) -> tuple[int, str]:
    """HTTP status and code for any sercon error."""
    if isinstance(exc, AccessError):
        return exc.status, exc.code
    if isinstance(exc, UnknownGuest):
        return 404, "unknown_vm"
    if isinstance(exc, InvalidSysRqKey):
        return 422, "invalid_sysrq_key"
    if isinstance(exc, ConsoleBusy):
        return 409, "console_busy"
    if isinstance(exc, GuestNotRunning):
        return 409, "not_running"
    if isinstance(exc, ActionFailed):
        return 409, "action_failed"
    return 500, "error"


#: A user's console output is paced like COM1 (emulator.pacing): reads less than 10 ms apart that
#: bring 64 bytes or more, faster than 20 kB/s, are a burst (an echo is a byte or a few, and the
#: fastest typist's echoes come at well under 1 kB/s), during which each read first lets output
#: gather for COALESCE_S (the user who types)...
COALESCE_S = 0.01
#: ...or this long for a read-only viewer: 20 screen updates a second in a burst, so 20 viewers of
#: one guest cost the gateway (and their browsers) a fifth of the frames and TLS records.
COALESCE_VIEWER_S = 0.05


def console_pacer(mode: str) -> BurstPacer:
    return BurstPacer(gap_s=0.01, min_bytes=63, min_rate=20_000,
                      hold_s=COALESCE_VIEWER_S if mode == "read" else COALESCE_S)


@dataclass(eq=False)
class ConsoleConnection:
    """One console-socket connection to a guest's owner, after the handshake."""

    vm: Vm
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    mode: str
    label: str
    #: Serial-log offset of the first byte this connection delivers (replay included).
    start: int
    took_over: str | None
    user: str = ""
    #: The web session (its cookie) this console belongs to, so logout can end it.
    session: str | None = None
    #: time.monotonic() of the last keystrokes written (0: none yet).
    last_input: float = 0.0
    #: Set when sercon serve itself ends the connection (e.g. "disabled", "logout").
    ended_by_server: str | None = None
    #: Set by the owner's "closed" event (e.g. "takeover"): never read from the guest's bytes.
    ended_by_owner: str | None = None

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    def end(self, reason: str) -> None:
        """End this console from the gateway's side (disabled, logout, expired)."""
        self.ended_by_server = self.ended_by_server or reason
        self.close()

    @property
    def reason(self) -> str:
        """Why the stream ended: the gateway's reason, else the owner's event, else "guest"."""
        return self.ended_by_server or self.ended_by_owner or "guest"

    async def output(self, limit: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Guest output in as few pieces as keeps it prompt, until the stream ends.

        A keystroke's echo goes out at once; in a burst each read waits first (`console_pacer`), so
        one websocket frame or TLS record carries kilobytes instead of a few bytes. Session events
        from the owner (takeover) are taken from their frames here, never from the guest's bytes."""
        decoder = FrameDecoder()
        pacer = console_pacer(self.mode)
        hold = 0.0
        while True:
            if hold:
                await asyncio.sleep(hold)
                pacer.resumed(time.monotonic())
            try:
                raw = await self.reader.read(limit)
            except ConnectionError:
                raw = b""
            if not raw:
                return
            hold = pacer.after_read(len(raw), time.monotonic())
            data = b"".join(self._take(frame) for frame in decoder.feed(raw))
            if data:
                yield data

    def _take(self, frame: Frame) -> bytes:
        if frame.kind == "data":
            return frame.data
        event = frame.event or {}
        if event.get("type") == "closed" and self.ended_by_owner is None:
            self.ended_by_owner = str(event.get("reason", "guest"))
        return b""


class FleetHost:
    def __init__(self, fleet: Fleet, audit: AuditLog) -> None:
        self.fleet = fleet
        self.audit = audit
        self.console_enabled = fleet.console_enabled
        self.vm_console: dict[str, bool] = {name: vm.console for name, vm in fleet.vms.items()}
        self.started: list[Machine] = []
        self.state_dir = paths.home() / "serve"
        #: Login attempts and password checks, shared by the web and SSH front ends.
        self.limiter = RateLimiter()
        self.passwords = PasswordChecker(self.limiter)
        #: Open console connections per VM name (so disabling a console ends them).
        self.connections: dict[str, set[ConsoleConnection]] = {}

    # ------------------------------------------------------------ lifecycle

    def start_guests(self, log: Any = print) -> None:
        """Start every guest of the fleet that is not already running (blocking; run in a thread)."""
        specs = {}
        for vm in self.fleet.vms.values():
            if Machine(name=vm.guest_name).is_running():
                log(f"  {vm.name}: attached to the running guest {vm.guest_name}")
                continue
            if vm.image not in specs:
                specs[vm.image] = resolve_image(vm.image)
        from concurrent.futures import ThreadPoolExecutor

        def boot(vm: Vm) -> None:
            machine = Machine(specs[vm.image], name=vm.guest_name, rfc2217=vm.rfc2217, **vm.overrides)
            machine.start()
            self.started.append(machine)
            log(f"  {vm.name}: started guest {vm.guest_name}")

        todo = [vm for vm in self.fleet.vms.values()
                if vm.image in specs and not Machine(name=vm.guest_name).is_running()]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            for future in [pool.submit(boot, vm) for vm in todo]:
                future.result()

    def stop_guests(self) -> None:
        for machine in self.started:
            machine.stop()
        self.started = []

    # ------------------------------------------------------------ authorization

    def lookup(self, name: str) -> Vm:
        vm = self.fleet.vm(name)
        if vm is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise AccessError(f"no VM or scale-set instance named {shown!r} in this fleet", 404, "unknown_vm")
        return vm

    def authorize(self, user: str, name: str, permission: str, source: str, via: str) -> Vm:
        """The VM if `user` may do `permission` on it; audits and raises AccessError otherwise.

        A user with no role on a VM gets 403 (not 404) so the answer does not depend on the name."""
        vm = self.lookup(name)
        if not self.fleet.allowed(user, vm, permission):
            role = self.fleet.role(user, vm)
            self.audit.write("denied", user=user, vm=vm.name, source=source, via=via, permission=permission,
                             role=role)
            if role is None:
                raise AccessError(f"user {user!r} has no role on {vm.name}; ask an owner of it for one", 403,
                                  "no_role")
            need = "owner" if permission == "configure" else "contributor or owner"
            raise AccessError(f"{permission} on {vm.name} needs the {need} role; {user!r} is {role}", 403,
                              "forbidden")
        return vm

    def console_open(self, vm: Vm) -> bool:
        return self.console_enabled and self.vm_console.get(vm.name, True)

    def check_console_enabled(self, vm: Vm, user: str, source: str, via: str) -> None:
        if not self.console_open(vm):
            scope = "for this fleet" if not self.console_enabled else f"for {vm.name}"
            self.audit.write("console_refused", user=user, vm=vm.name, source=source, via=via, reason="disabled")
            raise AccessError(f"the serial console is disabled {scope}; an owner can enable it "
                              "(boot diagnostics stay available)", 409, "console_disabled")

    def set_console(self, vm: Vm, enabled: bool, user: str, source: str, via: str) -> None:
        self.vm_console[vm.name] = enabled
        self.audit.write("console_enabled", user=user, vm=vm.name, source=source, via=via, enabled=enabled)
        if not enabled:
            for conn in list(self.connections.get(vm.name, ())):
                conn.end("disabled")

    def end_session_consoles(self, session: str, reason: str) -> int:
        """End every console opened under a web session (logout, expiry); returns how many."""
        ended = [c for conns in self.connections.values() for c in conns if c.session == session]
        for conn in ended:
            conn.end(reason)
        return len(ended)

    # ------------------------------------------------------------ control socket

    def folder(self, vm: Vm) -> Path:
        return paths.guest_dir(vm.guest_name)

    async def control(self, vm: Vm, op: str, by: str | None = None, **args: Any) -> Any:
        """One control-socket request (the operations table gives how long to wait for the answer);
        `by` says for whom, and the owner records it with every event the operation writes."""
        entry = lookup(op)
        wait = entry.timeout(args)
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.folder(vm) / "control.sock"),
                                                                limit=16 * 1024 * 1024)
        except OSError as exc:
            raise GuestNotRunning(f"{vm.name}: its owner process is not running (start the fleet again, "
                                  f"or `sercon up --name {vm.guest_name}`)") from exc
        try:
            writer.write(json.dumps({"op": entry.name, **args, **({"by": by} if by else {})}).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), wait)
        except TimeoutError as exc:
            raise ActionFailed(f"{vm.name}: {op} did not finish within {wait:.0f}s") from exc
        finally:
            writer.close()
        if not line:
            raise GuestNotRunning(f"{vm.name}: the owner closed the control connection during {op}")
        return decode_reply(json.loads(line), op)

    async def info(self, vm: Vm) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.control(vm, "info")
            return result
        except SerconError as exc:
            return {"state": "unreachable", "error": str(exc)}

    async def action(self, user: str, name: str, action: str, source: str, via: str,
                     body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An operation of the table offered by the gateway (power, SysRq, NMI, BREAK), authorized by
        its permission, its arguments checked by the table, audited."""
        op = ACTIONS.get(action)
        if op is None or op.permission is None:
            raise AccessError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", 404, "unknown_action")
        vm = self.authorize(user, name, op.permission, source, via)
        body = body or {}
        fields: dict[str, Any] = {}
        try:
            args = op.parse({k: v for k, v in body.items() if k != "interval"})
        except ControlError as exc:
            code = {"sysrq": "invalid_sysrq_key", "restart": "bad_timeout"}.get(op.name, "bad_body")
            raise AccessError(f"{exc}; for example {_EXAMPLES.get(op.name, '{}')}", 422, code) from exc
        if op.name == "sysrq":
            try:
                parsed = parse_keys(args["keys"])
                if len(parsed) > SYSRQ_MAX_KEYS:
                    raise InvalidSysRqKey(f"a SysRq sequence has at most {SYSRQ_MAX_KEYS} keys, not {len(parsed)}")
                args["keys"] = fields["keys"] = "".join(parsed)
            except InvalidSysRqKey:
                self.audit.write("action", user=user, vm=vm.name, source=source, via=via, action=action, ok=False,
                                 error="invalid key", keys=args["keys"][:40])
                raise
        started = time.monotonic()
        try:
            result = await self.control(vm, op.name, by=f"{via}:{user}@{source}", **args)
        except SerconError as exc:
            self.audit.write("action", user=user, vm=vm.name, source=source, via=via, action=action, ok=False,
                             error=str(exc)[:300], **fields)
            raise
        self.audit.write("action", user=user, vm=vm.name, source=source, via=via, action=action, ok=True, **fields)
        return {"ok": True, "vm": vm.name, "action": action, "result": result,
                "seconds": round(time.monotonic() - started, 3), **fields}

    def read_log(self, vm: Vm, start: int, length: int | None) -> LogChunk:
        path = self.folder(vm) / "serial.log"
        if not path.exists():
            raise GuestNotRunning(f"{vm.name} has no serial log yet (was it ever started?)")
        length = LOG_PAGE_MAX if length is None else max(0, min(length, LOG_PAGE_MAX))
        return read_log(path, start, length)

    async def screenshot(self, vm: Vm) -> bytes:
        target = self.state_dir / "screenshots" / f"{vm.guest_name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        await self.control(vm, "screenshot", by=f"gateway:{vm.name}", path=str(target))
        return target.read_bytes()

    # ------------------------------------------------------------ console socket

    async def open_console(self, vm_name: str, mode: str, user: str, source: str, via: str,
                           from_offset: int | None, session: str | None = None) -> ConsoleConnection:
        """A console connection (mode `interactive` or `read`), authorized and audited on every call:
        a reconnect after a takeover or an idle close is checked as a new connection is."""
        vm = self.authorize(user, vm_name, "console", source, via)
        self.check_console_enabled(vm, user, source, via)
        mine = sum(1 for conns in self.connections.values() for c in conns if c.user == user)
        per_user, per_vm = self.fleet.consoles_per_user, self.fleet.consoles_per_vm
        if mine >= per_user or len(self.connections.get(vm.name, ())) >= per_vm:
            self.audit.write("console_refused", user=user, vm=vm.name, source=source, via=via, reason="too many")
            limit = (f"{user!r} has {mine} consoles open (at most {per_user})" if mine >= per_user
                     else f"{vm.name} has {per_vm} consoles open, the most it serves")
            raise AccessError(f"{limit}; close one first", 429, "too_many_consoles")
        label = f"{via}:{user}@{source}"
        holder = None
        if mode == "interactive":
            info = await self.info(vm)
            holder = info.get("interactive")
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.folder(vm) / "console.sock"))
        except OSError as exc:
            raise GuestNotRunning(f"{vm.name}: its owner process is not running") from exc
        writer.write(make_hello(mode, label, from_offset=from_offset, events=True, replay_max=REPLAY_MAX))
        try:
            line = await asyncio.wait_for(reader.readline(), 15)
        except (TimeoutError, ConnectionError) as exc:
            writer.close()
            raise ActionFailed(f"{vm.name}: the console did not answer") from exc
        try:
            reply = decode_reply(json.loads(line) if line else {"ok": False, "error": {
                "message": "the console closed the connection during the handshake"}}, "the console handshake")
        except (SerconError, ValueError) as exc:
            writer.close()
            self.audit.write("console_refused", user=user, vm=vm.name, source=source, via=via, mode=mode,
                             reason=str(exc)[:300], holder=holder)
            if isinstance(exc, SerconError):
                raise
            raise ControlError(f"{vm.name}: the console answered the handshake with garbage ({exc})") from exc
        start = int(reply.get("replay_from", reply["offset"]))
        if holder:
            self.audit.write("console_takeover", user=user, vm=vm.name, source=source, via=via, previous=holder)
        self.audit.write("console_connect", user=user, vm=vm.name, source=source, via=via, mode=mode)
        conn = ConsoleConnection(vm=vm, reader=reader, writer=writer, mode=mode, label=label, start=start,
                                 took_over=holder, user=user, session=session)
        self.connections.setdefault(vm.name, set()).add(conn)
        return conn

    def console_closed(self, conn: ConsoleConnection, user: str, source: str, via: str, reason: str) -> None:
        conn.close()
        self.connections.get(conn.vm.name, set()).discard(conn)
        self.audit.write("console_disconnect", user=user, vm=conn.vm.name, source=source, via=via, mode=conn.mode,
                         reason=reason)
