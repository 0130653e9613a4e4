"""The fleet file: which guests `sercon serve` hosts, who may log in, and who may do what on which guest.

A fleet file is TOML (see `examples/fleet.toml`):

    [serve]                       # all optional
    host = "127.0.0.1"
    port = 8443                   # HTTPS (web console + REST)
    ssh_port = 8022               # SSH front end (0: off)
    console_enabled = true        # false: every console is refused (boot diagnostics stay)
    idle_timeout = 900            # seconds without input before a console session ends
    consoles_per_user = 8         # open consoles one user may hold (all VMs)
    consoles_per_vm = 16          # open consoles one VM serves (all users)
    cert = "server.crt"           # optional; relative to the fleet file. Default: self-signed, generated once
    key = "server.key"
    audit_log = "audit.jsonl"     # optional; default $SERCON_HOME/serve/<fleet>/audit.jsonl

    [vms.web1]                    # one VM
    image = "linux-initramfs"     # recipe name or kernel/disk path, as for `sercon up`
    policy = "takeover"           # second interactive user: takeover (Azure) or reject (AWS)
    console = true                # false: this VM's console is disabled
    rfc2217 = false               # true: also an unauthenticated RFC 2217 port on 127.0.0.1 (see below)
    memory_mb = 256               # any other GuestSpec field
    host = "qemu+ssh://lab1/system"  # QEMU on this libvirt host (default: a process here)
    roles = { alice = "owner", bob = "contributor", carol = "reader" }

    [scale_sets.pool]             # N instances of one spec, addressed as pool/0, pool/1, ...
    image = "linux-initramfs"
    instances = 2
    hosts = ["qemu:///system", "qemu+ssh://lab1/system"]  # instance i on hosts[i % len]
    roles = { bob = "contributor" }

    [users.alice]
    password = "scrypt$..."       # written by `sercon user add FLEET alice`
    ssh_keys = ["ssh-ed25519 AAAA..."]

Roles (Azure's model): `owner` may do everything, including enabling and disabling the console;
`contributor` gets the console, power actions, SysRq, NMI and boot diagnostics; `reader` gets boot
diagnostics only (serial log, screenshot). A role on a scale set applies to each of its instances.

Types are checked strictly: `console_enabled = "false"` is an error naming the key, not true.
An RFC 2217 port has no logins and no roles: any local user who finds it gets that console, so a
fleet VM has none unless its table says `rfc2217 = true`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import SerconError
from ..machine import NAME_RE

Role = Literal["owner", "contributor", "reader"]
ROLES: tuple[Role, ...] = ("reader", "contributor", "owner")
#: What each role may do. `console` = interactive console; `diagnostics` = serial log and screenshot.
PERMISSIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({"diagnostics"}),
    "contributor": frozenset({"diagnostics", "console", "power", "sysrq", "nmi"}),
    "owner": frozenset({"diagnostics", "console", "power", "sysrq", "nmi", "configure"}),
}
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
#: Keys of a VM / scale-set table that are not GuestSpec fields.
FLEET_KEYS = {"image", "roles", "console", "instances", "rfc2217", "hosts"}
SERVE_KEYS = {"host", "port", "ssh_port", "console_enabled", "idle_timeout", "cert", "key", "audit_log",
              "ssh_host_key", "consoles_per_user", "consoles_per_vm"}
#: Default caps on open consoles: per user (all VMs) and per VM (all users).
CONSOLES_PER_USER = 8
CONSOLES_PER_VM = 16
#: The largest cap a fleet file may set (each console is a socket and a task in the owner).
CONSOLES_MAX = 1000


class FleetError(SerconError):
    """The fleet file is wrong; the message names the file and the entry."""


@dataclass
class User:
    name: str
    password_hash: str | None
    ssh_keys: list[str] = field(default_factory=list)


@dataclass
class Vm:
    """One addressable guest: a VM (`web1`) or a scale-set instance (`pool/0`)."""

    name: str          # as users write it: web1, pool/0
    guest_name: str    # the sercon guest name: web1, pool-0
    image: str
    overrides: dict[str, Any]
    roles: dict[str, Role]
    console: bool = True
    scale_set: str | None = None
    #: An unauthenticated RFC 2217 port on 127.0.0.1 for this guest (off unless the fleet asks).
    rfc2217: bool = False

    @property
    def policy(self) -> str:
        return str(self.overrides.get("policy", "takeover"))


@dataclass
class Fleet:
    path: Path
    host: str = "127.0.0.1"
    port: int = 8443
    ssh_port: int = 8022
    console_enabled: bool = True
    idle_timeout: float = 900.0
    consoles_per_user: int = CONSOLES_PER_USER
    consoles_per_vm: int = CONSOLES_PER_VM
    cert: Path | None = None
    key: Path | None = None
    audit_log: Path | None = None
    ssh_host_key: Path | None = None
    vms: dict[str, Vm] = field(default_factory=dict)
    scale_sets: dict[str, list[str]] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)

    # ---------------------------------------------------------------- queries

    def vm(self, name: str) -> Vm | None:
        return self.vms.get(name)

    def role(self, user: str, vm: Vm) -> Role | None:
        return vm.roles.get(user)

    def allowed(self, user: str, vm: Vm, permission: str) -> bool:
        role = self.role(user, vm)
        return role is not None and permission in PERMISSIONS[role]

    def console_open(self, vm: Vm) -> bool:
        return self.console_enabled and vm.console

    def visible_vms(self, user: str) -> list[Vm]:
        return [vm for vm in self.vms.values() if user in vm.roles]


def _fail(path: Path, where: str, message: str) -> FleetError:
    return FleetError(f"{path}: {where}: {message}")


_MISSING = object()


def _typed(path: Path, where: str, table: dict[str, Any], key: str, kind: type | tuple[type, ...],
           default: Any, what: str) -> Any:
    """`table[key]` if it has the right TOML type (booleans are never numbers), else one clear error."""
    value = table.get(key, _MISSING)
    if value is _MISSING:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _fail(path, where, f"{key} must be {what}, not {value!r} ({type(value).__name__})")
    return value


def _bool(path: Path, where: str, table: dict[str, Any], key: str, default: bool) -> bool:
    return bool(_typed(path, where, table, key, bool, default, "true or false (no quotes)"))


def _roles(path: Path, where: str, raw: Any, users: dict[str, Any]) -> dict[str, Role]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, where, 'roles must be a table, e.g. roles = { alice = "owner" }')
    roles: dict[str, Role] = {}
    for user, role in raw.items():
        if role not in ROLES:
            raise _fail(path, where, f"role of {user!r} must be one of {', '.join(ROLES)}, not {role!r}")
        if user not in users:
            raise _fail(path, where, f"role for unknown user {user!r}; add it under [users.{user}] "
                        f"(`sercon user add {path} {user}`)")
        roles[user] = role
    return roles


def _spec_overrides(path: Path, where: str, table: dict[str, Any]) -> dict[str, Any]:
    from ..spec import GuestSpec

    known = set(GuestSpec.__dataclass_fields__)
    overrides = {k: v for k, v in table.items() if k not in FLEET_KEYS}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise _fail(path, where, f"unknown setting(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known | FLEET_KEYS))}")
    policy = overrides.get("policy", "takeover")
    if policy not in ("takeover", "reject"):
        raise _fail(path, where, f"policy must be takeover or reject, not {policy!r}")
    if "host" in overrides:
        overrides["host"] = _host(path, where, overrides["host"])
    return overrides


def _host(path: Path, where: str, value: Any) -> str:
    from ..host_uri import check_host_uri

    if not isinstance(value, str):
        raise _fail(path, where, f"host must be a libvirt URI in quotes, not {value!r}")
    try:
        return check_host_uri(value)
    except SerconError as exc:
        raise _fail(path, where, str(exc)) from exc


def _hosts(path: Path, where: str, table: dict[str, Any]) -> list[str]:
    """A scale set's `hosts = [...]`: its instances are spread over them in turn."""
    raw = table.get("hosts")
    if raw is None:
        return []
    if "host" in table:
        raise _fail(path, where, "give host (all instances on one host) or hosts (spread over several), not both")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, where, 'hosts must be a list of libvirt URIs, e.g. ["qemu:///system", '
                    '"qemu+ssh://b/system"]')
    return [_host(path, where, item) for item in raw]


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; raises FleetError naming the bad entry."""
    path = Path(path).resolve()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise FleetError(f"fleet file not found: {path} (see examples/fleet.toml)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{path}: not valid TOML: {exc}") from exc
    serve = data.get("serve", {})
    if not isinstance(serve, dict):
        raise _fail(path, "serve", "must be a table: [serve]")
    unknown = sorted(set(serve) - SERVE_KEYS)
    if unknown:
        raise _fail(path, "[serve]", f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(SERVE_KEYS))}")
    unknown_top = sorted(set(data) - {"serve", "vms", "scale_sets", "users"})
    if unknown_top:
        raise _fail(path, "top level", f"unknown table(s) {', '.join(unknown_top)}; "
                    "expected serve, vms, scale_sets, users")

    def rel(value: Any) -> Path | None:
        return (path.parent / str(value)).resolve() if value else None

    def port(key: str, default: int) -> int:
        value = int(_typed(path, "[serve]", serve, key, int, default, "a port number from 0 to 65535"))
        if not 0 <= value <= 65535:
            raise _fail(path, "[serve]", f"{key} must be a port number from 0 to 65535, not {value}")
        return value

    def text(table: dict[str, Any], where: str, key: str) -> str | None:
        value = _typed(path, where, table, key, str, None, "a string in quotes")
        return str(value) if value is not None else None

    idle = float(_typed(path, "[serve]", serve, "idle_timeout", (int, float), 900, "a number of seconds"))
    if not 1 <= idle <= 7 * 24 * 3600:
        raise _fail(path, "[serve]", f"idle_timeout must be from 1 to 604800 seconds, not {idle:g}")
    def cap(key: str, default: int) -> int:
        value = int(_typed(path, "[serve]", serve, key, int, default, f"a whole number from 1 to {CONSOLES_MAX}"))
        if not 1 <= value <= CONSOLES_MAX:
            raise _fail(path, "[serve]", f"{key} must be a whole number from 1 to {CONSOLES_MAX}, not {value}")
        return value

    fleet = Fleet(
        path=path,
        host=text(serve, "[serve]", "host") or "127.0.0.1",
        port=port("port", 8443),
        ssh_port=port("ssh_port", 8022),
        console_enabled=_bool(path, "[serve]", serve, "console_enabled", True),
        idle_timeout=idle,
        consoles_per_user=cap("consoles_per_user", CONSOLES_PER_USER),
        consoles_per_vm=cap("consoles_per_vm", CONSOLES_PER_VM),
        cert=rel(text(serve, "[serve]", "cert")),
        key=rel(text(serve, "[serve]", "key")),
        audit_log=rel(text(serve, "[serve]", "audit_log")),
        ssh_host_key=rel(text(serve, "[serve]", "ssh_host_key")),
    )
    if (fleet.cert is None) != (fleet.key is None):
        raise _fail(path, "[serve]", "give both cert and key, or neither (a self-signed pair is then generated)")

    users_raw = data.get("users", {})
    for name, table in users_raw.items():
        if not USER_RE.match(name):
            raise _fail(path, f"[users.{name}]", "user names are lower-case letters, digits, '_', '.', '-' (max 32)")
        if not isinstance(table, dict):
            raise _fail(path, f"[users.{name}]", "must be a table")
        keys = table.get("ssh_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _fail(path, f"[users.{name}]", "ssh_keys must be a list of public key lines")
        password = _typed(path, f"[users.{name}]", table, "password", str, None, 'a hash string ("scrypt$...")')
        unknown_user_keys = sorted(set(table) - {"password", "ssh_keys"})
        if unknown_user_keys:
            raise _fail(path, f"[users.{name}]", f"unknown setting(s) {', '.join(unknown_user_keys)}; "
                        "known: password, ssh_keys")
        fleet.users[name] = User(name=name, password_hash=password, ssh_keys=list(keys))

    guest_names: set[str] = set()

    def add(vm: Vm) -> None:
        if vm.guest_name in guest_names:
            raise _fail(path, vm.name, f"guest name {vm.guest_name!r} is used twice (a VM and a scale-set instance?)")
        guest_names.add(vm.guest_name)
        fleet.vms[vm.name] = vm

    for section in ("vms", "scale_sets", "users"):
        if not isinstance(data.get(section, {}), dict) or not all(
                isinstance(t, dict) for t in data.get(section, {}).values()):
            raise _fail(path, section, f"each entry must be a table, e.g. [{section}.NAME]")
    for name, table in data.get("vms", {}).items():
        where = f"[vms.{name}]"
        if not NAME_RE.match(name):
            raise _fail(path, where, "VM names are letters, digits, '.', '_' and '-' (max 63), "
                        "starting with a letter or digit")
        if "hosts" in table:
            raise _fail(path, where, "hosts (a spread over several hosts) is for scale sets; a VM has one host")
        add(Vm(name=name, guest_name=name, image=text(table, where, "image") or "linux-initramfs",
               overrides=_spec_overrides(path, where, table), roles=_roles(path, where, table.get("roles"), users_raw),
               console=_bool(path, where, table, "console", True), rfc2217=_bool(path, where, table, "rfc2217", False)))
    for name, table in data.get("scale_sets", {}).items():
        where = f"[scale_sets.{name}]"
        if not NAME_RE.match(name) or len(name) > 56:
            raise _fail(path, where, "scale-set names are letters, digits, '.', '_' and '-' (max 56)")
        count = table.get("instances", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            raise _fail(path, where, "instances must be a whole number from 1 to 100")
        roles = _roles(path, where, table.get("roles"), users_raw)
        overrides = _spec_overrides(path, where, table)
        spread = _hosts(path, where, table)
        fleet.scale_sets[name] = []
        for index in range(count):
            vm = Vm(name=f"{name}/{index}", guest_name=f"{name}-{index}",
                    image=text(table, where, "image") or "linux-initramfs",
                    overrides={**overrides, **({"host": spread[index % len(spread)]} if spread else {})},
                    roles=dict(roles), console=_bool(path, where, table, "console", True),
                    scale_set=name, rfc2217=_bool(path, where, table, "rfc2217", False))
            add(vm)
            fleet.scale_sets[name].append(vm.name)
    if not fleet.vms:
        raise _fail(path, "top level", "no [vms.NAME] or [scale_sets.NAME] defined: nothing to serve")
    return fleet


# ------------------------------------------------------------ editing (user add)

_SECTION_RE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_user(path: Path, name: str, password_hash: str | None, ssh_keys: list[str] | None) -> bool:
    """Write `[users.NAME]` into the fleet file, keeping everything else (comments too).

    Returns True if the user existed (their password / keys were replaced)."""
    if not USER_RE.match(name):
        raise FleetError(f"invalid user name {name!r}: lower-case letters, digits, '_', '.', '-' (max 32)")
    lines = path.read_text().splitlines() if path.exists() else []
    header = f"users.{name}"
    start = next((i for i, line in enumerate(lines)
                  if (m := _SECTION_RE.match(line)) and m.group(1).strip() == header), None)
    new_body: list[str] = []
    if password_hash is not None:
        new_body.append(f"password = {_toml_str(password_hash)}")
    if ssh_keys is not None:
        new_body.append("ssh_keys = [" + ", ".join(_toml_str(k) for k in ssh_keys) + "]")
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{header}]", *new_body]
        existed = False
    else:
        end = next((i for i in range(start + 1, len(lines)) if _SECTION_RE.match(lines[i])), len(lines))
        body = lines[start + 1:end]
        if password_hash is not None:
            body = [b for b in body if not re.match(r"^\s*password\s*=", b)]
        if ssh_keys is not None:
            body = [b for b in body if not re.match(r"^\s*ssh_keys\s*=", b)]
        lines[start + 1:end] = new_body + body
        existed = True
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # never write a file we could not read back
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return existed
