"""Every operation on a guest, in one table: its name, what it needs, whether it is recorded, its arguments.

From this table come:
- the owner's dispatch (`emulator.control.ControlServer`): unknown operations and bad arguments
  are refused with one clear line, before anything runs;
- the sync client (`Machine`, whose methods are checked against the table by the unit tests) and
  the gateway's async client (`FleetHost.control`), with each operation's answer timeout;
- the gateway's REST routes and authorization: `POST /api/vms/{vm}/{cli_name}` exists for every
  operation with a `permission` (the fleet role permission it needs); the others are not
  reachable through the gateway at all;
- the `sercon` subcommands of the simple operations (`sercon nmi|reset|restart|power-cycle|
  sysrq|send-break NAME ...`), with their arguments as options.

Names: the wire and Python name uses `_` (`power_cycle`), the CLI and REST name `-` (`power-cycle`).
`owner_only` operations (the whole QEMU monitor, files written at a path, snapshots, stop) are for
the guest's own user and root, which is who the control socket lets in at all (SO_PEERCRED);
they are never offered by the gateway.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ControlError

#: Who the running operation is for ("uid 1000 for web:bob@10.0.0.1:5"); set by the control
#: socket's dispatch and written by the owner into every event recorded meanwhile.
ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("sercon_actor", default=None)
_REQUIRED = object()
_KINDS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "object": (dict,)}


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # str, int, float, object
    default: Any = _REQUIRED
    help: str = ""
    low: float | None = None
    high: float | None = None
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, op: str, value: Any) -> Any:
        if value is None and (self.nullable or not self.required):
            return None if self.nullable else self.default
        kinds = _KINDS[self.kind]
        if isinstance(value, bool) or not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ControlError(f"{op}: {self.name} must be {self.describe()}, not {str(value)[:40]!r}")
        checked: Any = value
        if (self.low is not None and checked < self.low) or (self.high is not None and checked > self.high):
            bounds = (f"from {self.low:g} to {self.high:g}" if self.low is not None and self.high is not None
                      else f"at least {self.low:g}" if self.low is not None else f"at most {self.high:g}")
            raise ControlError(f"{op}: {self.name} must be {bounds}, not {value}")
        if self.kind == "str" and len(checked) > 4096:
            raise ControlError(f"{op}: {self.name} is longer than 4096 characters")
        return value

    def describe(self) -> str:
        return {"str": "a string", "int": "a whole number", "float": "a number",
                "object": "a JSON object"}[self.kind] + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Operation:
    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    #: The fleet permission the gateway requires (None: not offered by the gateway).
    permission: str | None = None
    #: Written to the guest's event log (and, through the gateway, its audit log).
    audited: bool = True
    #: For the guest's own user and root only (see the module docstring).
    owner_only: bool = False
    #: How long a client waits for the answer, in seconds (restart adds its own timeout).
    wait: float = 60.0
    #: The operation stops when the requester hangs up (a SysRq sequence from a timed-out request).
    cancel_on_hangup: bool = False
    #: A `sercon` subcommand built from this entry (the others have their own, richer commands).
    simple_cli: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def parse(self, request: dict[str, Any]) -> dict[str, Any]:
        """The checked arguments of one request: known names, right types, defaults filled in."""
        known = {a.name for a in self.args}
        unknown = sorted(set(request) - known - {"op", "by"})
        if unknown:
            takes = ", ".join(sorted(known)) or "no arguments"
            raise ControlError(f"{self.name}: unknown argument(s) {', '.join(unknown)[:200]}; it takes {takes}")
        parsed: dict[str, Any] = {}
        for arg in self.args:
            if arg.name not in request or (request[arg.name] is None and not arg.nullable):
                if arg.required:
                    raise ControlError(f"{self.name}: missing {arg.name} ({arg.describe()}: {arg.help})")
                parsed[arg.name] = arg.default
                continue
            parsed[arg.name] = arg.check(self.name, request[arg.name])
        return parsed

    def timeout(self, args: dict[str, Any]) -> float:
        return self.wait + float(args.get("timeout") or 0)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("info", "state, boot count, clients, paths", audited=False, wait=10),
    Operation("sysrq", "BREAK then a key, per key",
              (Arg("keys", "str", help="one key (h) or a sequence (reisub), at most 32"),
               Arg("interval", "float", 0.1, "seconds between keys", 0, 5)),
              permission="sysrq", cancel_on_hangup=True, simple_cli=True),
    Operation("send_break", "a BREAK on COM1", permission="sysrq", simple_cli=True, aliases=("break",)),
    Operation("nmi", "inject an NMI", permission="nmi", simple_cli=True),
    Operation("reset", "hard reset (the console stays connected)", permission="power", simple_cli=True),
    Operation("restart", "graceful restart (ACPI power button)",
              (Arg("timeout", "float", 60.0, "seconds to wait for the guest to power off", 1, 600),),
              permission="power", wait=30, simple_cli=True),
    Operation("power_cycle", "end the QEMU process and start a new one", permission="power", wait=120,
              simple_cli=True),
    Operation("snapshot", "save the running guest's whole state",
              (Arg("name", "str", help="snapshot name"), Arg("extra", "object", None, "kept with it", nullable=True)),
              owner_only=True, wait=300),
    Operation("restore", "load a snapshot into the running guest", (Arg("name", "str", help="snapshot name"),),
              owner_only=True, wait=120),
    Operation("screenshot", "the screen as PNG, written by QEMU at a path",
              (Arg("path", "str", help="where QEMU writes the PNG"),), owner_only=True, wait=30),
    Operation("log", "serial log bytes",
              (Arg("start", "int", 0, "byte offset; negative counts from the end"),
               Arg("length", "int", None, "at most this many bytes", 0, nullable=True)),
              audited=False, wait=30),
    Operation("events", "the event log", (Arg("since", "float", 0.0, "Unix time"),), audited=False, wait=30),
    Operation("qmp", "any QMP command (the whole QEMU monitor)",
              (Arg("command", "str", help="QMP command"),
               Arg("arguments", "object", None, "its arguments", nullable=True)),
              owner_only=True),
    Operation("stop", "power off for good and end the owner", owner_only=True, wait=30),
)}
_BY_ALIAS = {alias: op for op in OPERATIONS.values() for alias in (op.cli_name, *op.aliases)}


def lookup(name: Any) -> Operation:
    """The operation called `name` (wire, CLI or REST spelling), or one clear error listing them."""
    op = OPERATIONS.get(name) if isinstance(name, str) else None
    if op is None and isinstance(name, str):
        op = _BY_ALIAS.get(name)
    if op is None:
        raise ControlError(f"unknown operation {str(name)[:40]!r}; known: {', '.join(OPERATIONS)}, subscribe")
    return op


def gateway_operations() -> dict[str, Operation]:
    """Operations the gateway offers as `POST /api/vms/{vm}/{cli_name}`, by that name."""
    return {op.cli_name: op for op in OPERATIONS.values() if op.permission is not None}
