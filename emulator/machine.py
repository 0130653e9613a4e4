"""`Machine`: the Python handle on one guest, for scripts, the CLI and the pytest plugin.

    from emulator import Machine
    with Machine("linux-initramfs") as m:      # builds the image if needed, boots it
        m.sysrq("h")
        m.nmi()
        m.reset()
        print(m.read_log(-2000).decode())

`start()` launches the guest's owner process (`emulator.daemon`), which keeps running until
`stop()`; `Machine.attach(name)` reaches a guest someone else started (`sercon up`). Every action
goes through the owner's control socket, so a script, the CLI and a human at `sercon attach` all
see the same guest, the same log and the same events.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from . import forkserver, paths, settings
from .console_socket import open_console
from .control import ControlClient
from .errors import ERROR_CLASSES, GuestDied, GuestExists, SerconError, UnknownGuest
from .images import DEFAULT_IMAGE, resolve_image
from .operations import lookup
from .qemu_args import find_qemu
from .serial_log import EventLog, read_log, tail_lines
from .spec import GuestSpec
from .trust import private_dir, write_private

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: Covers the KVM probe (6 s, once per host boot) plus QEMU start on a loaded machine.
START_TIMEOUT = 60.0


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise SerconError(f"invalid guest name {name!r}: use letters, digits, '.', '_' and '-' (max 63)")
    return name


def owner_env() -> dict[str, str]:
    """The environment an owner starts with (and that picks its fork server): this process's, with
    `emulator` importable from wherever this process imported it (works from a checkout too)."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Machine:
    """One guest: a QEMU process with a 16550 on COM1, owned by a console owner process."""

    def __init__(self, spec: GuestSpec | str = DEFAULT_IMAGE, name: str | None = None, *,
                 from_snapshot: str | None = None, rfc2217: bool = False, **overrides: Any) -> None:
        self._spec_source = spec
        #: Also serve COM1 as an RFC 2217 port on 127.0.0.1. It has no authentication: any local
        #: user who finds the port gets the console. Off unless asked for.
        self.rfc2217 = rfc2217
        #: Start by loading this snapshot (see `snapshot()`) instead of booting.
        self.from_snapshot = from_snapshot
        self._overrides = overrides
        self.spec: GuestSpec | None = spec if isinstance(spec, GuestSpec) else None
        self.name = check_name(name) if name else None
        self.folder: Path | None = paths.guest_dir(self.name) if self.name else None
        self._started_here = False

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def attach(cls, name: str) -> Machine:
        """The running guest called `name` (started by `sercon up`, a test, or another script)."""
        machine = cls(name=name)
        if not machine.is_running():
            raise UnknownGuest(f"no running guest named {name!r}; `sercon ls` lists them")
        machine.spec = machine._read_spec()
        return machine

    def _read_spec(self) -> GuestSpec | None:
        """The guest's spec: spec.json (0600, it holds the guest password) if this user may read it,
        else what `info` tells anyone (no password)."""
        if self.folder is not None:
            try:
                return GuestSpec.from_json((self.folder / "spec.json").read_text())
            except (OSError, ValueError):
                pass
        spec = self.info().get("spec")
        return GuestSpec.from_dict(spec) if spec else None

    @staticmethod
    def running() -> list[str]:
        root = paths.guests_dir()
        if not root.is_dir():
            return []
        live = (d.name for d in root.iterdir() if (d / "control.sock").exists())
        return sorted(name for name in live if Machine(name=name).is_running())

    def is_running(self) -> bool:
        if self.folder is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.folder / "control.sock"))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def _pick_name(self, image: str | None) -> str:
        stem = Path(image).name if image else "guest"  # an image may be a path
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("-._")[:50] or "guest"
        for n in range(1, 1000):
            candidate = f"{base}-{n}"
            folder = paths.guest_dir(candidate)
            if not folder.exists() or not Machine(name=candidate).is_running():
                return candidate
        raise SerconError("too many guests; stop some with `sercon down`")

    def start(self, timeout: float = START_TIMEOUT) -> Machine:
        """Build the image if needed, start the owner and QEMU; returns once the guest is powered on."""
        settings.check()  # the owner and its fork server have no terminal to refuse a bad value on
        if not (self._overrides.get("host") or (self.spec is not None and self.spec.host)):
            find_qemu()  # fail early with the package name (a libvirt host has its own QEMU)
        if self.spec is None:
            self.spec = resolve_image(str(self._spec_source), **self._overrides)
        elif self._overrides:
            self.spec = self.spec.replace(**{k: v for k, v in self._overrides.items() if v is not None})
        self.spec.validate()
        if self.name is None:
            self.name = self._pick_name(self.spec.image)
        self.folder = paths.guest_dir(self.name)
        if self.is_running():
            raise GuestExists(f"a guest named {self.name!r} is already running; `sercon down {self.name}` first")
        self._prepare_folder(self.folder)
        spec_file = self.folder / "spec.json"
        write_private(spec_file, self.spec.to_json())
        env = owner_env()
        argv = ["--name", self.name, "--folder", str(self.folder), "--spec", str(spec_file),
                *(["--from-snapshot", self.from_snapshot] if self.from_snapshot else []),
                *(["--rfc2217"] if self.rfc2217 else [])]
        log_path = self.folder / "owner.log"
        warm = forkserver.start_owner(argv, env, log_path, timeout) if forkserver.enabled() else None
        if warm is not None:
            line, _pid = warm
        else:
            line = self._start_plain(argv, env, log_path, timeout)
        if line.startswith("READY "):
            self._started_here = True
            return self
        if line.startswith("ERROR "):
            error = json.loads(line[6:])
            deadline = time.monotonic() + 10
            while self.is_running() and time.monotonic() < deadline:  # the owner is ending
                time.sleep(0.02)
            raise ERROR_CLASSES.get(error["type"], SerconError)(error["message"])
        if warm is not None and warm[1]:
            try:
                os.kill(warm[1], signal.SIGKILL)
            except ProcessLookupError:
                pass
        log_tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise SerconError(f"the guest owner did not start within {timeout:.0f}s; owner.log ends:\n{log_tail}")

    @staticmethod
    def _start_plain(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> str:
        """`python -m emulator.daemon ...` in its own session; its report line ("" if none in time)."""
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(log_fd, "ab") as owner_log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "emulator.daemon", *argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=owner_log,
                start_new_session=True, env=env,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().decode() if ready else ""
        proc.stdout.close()
        if line.startswith("ERROR "):
            proc.wait(timeout=10)
        elif not line.startswith("READY "):
            proc.kill()
        return line

    @staticmethod
    def _prepare_folder(folder: Path) -> None:
        """A fresh folder for a new run; the previous run's logs move to `previous/`."""
        private_dir(folder.parent)
        private_dir(folder)
        if (folder / "serial.log").exists():
            previous = folder / "previous"
            shutil.rmtree(previous, ignore_errors=True)
            private_dir(previous)
            for item in ("serial.log", "events.jsonl", "qemu.log", "owner.log", "spec.json"):
                if (folder / item).exists():
                    (folder / item).rename(previous / item)
        for sock in ("control.sock", "console.sock"):
            (folder / sock).unlink(missing_ok=True)
        path_len = len(str(folder / "console.sock"))
        if path_len > 107:
            raise SerconError(f"{folder} is too deep for a unix socket path ({path_len} > 107 characters); "
                              "set SERCON_HOME to a shorter folder")

    def stop(self) -> None:
        """Power off and end the owner. The folder (serial log, events) stays for inspection."""
        if self.is_running():
            try:
                self._control().call("stop", io_timeout=30)
            except (SerconError, OSError):
                pass
        # Wait for the owner to remove its socket, so a new guest may take the name at once.
        deadline = time.monotonic() + 10
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Machine:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --------------------------------------------------------------- control

    def _control(self) -> ControlClient:
        if self.folder is None:
            raise UnknownGuest("this Machine has not been started")
        return ControlClient(self.folder / "control.sock")

    def call(self, op: str, **args: Any) -> Any:
        """Any operation of `emulator.operations.OPERATIONS` by name (`power_cycle` or `power-cycle`),
        waiting as long as the table says; the methods below are its typed spellings."""
        entry = lookup(op)
        return self._control().call(entry.name, io_timeout=entry.timeout(args), **args)

    _call = call

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("info")
        owner_file = self.folder / "owner.json" if self.folder else None
        if owner_file and owner_file.exists():
            port = json.loads(owner_file.read_text()).get("rfc2217_port")
            result.update({"rfc2217_port": port, "rfc2217_authenticated": False if port else None})
        return result

    @property
    def state(self) -> str:
        return str(self.info()["state"])

    @property
    def boot(self) -> int:
        return int(self.info()["boot"])

    def sysrq(self, keys: str, interval: float = 0.1) -> list[str]:
        """Send SysRq: one key (`"h"`) or a sequence (`"reisub"`), a BREAK before each key."""
        result: list[str] = self._call("sysrq", keys=keys, interval=interval)
        return result

    def send_break(self) -> None:
        """A BREAK condition on COM1 (what `sysrq()` sends before each key)."""
        self._call("send_break")

    def nmi(self) -> None:
        self._call("nmi")

    def reset(self) -> None:
        """Hard reset; the console stays connected and shows the new boot."""
        self._call("reset")

    def restart(self, timeout: float = 60.0) -> None:
        """Graceful restart through the ACPI power button; raises ActionFailed if the guest ignores it."""
        self._call("restart", timeout=timeout)

    def power_cycle(self) -> None:
        """Stop the QEMU process and start a new one; same console, same log."""
        self._call("power_cycle")

    def snapshot(self, name: str, **extra: Any) -> dict[str, Any]:
        """Save the whole running state as snapshot `name` (JSON-able `extra` is kept with it).

        New guests start from it with `Machine(spec, from_snapshot=name)`; see emulator/snapshots.py.
        """
        meta: dict[str, Any] = self._call("snapshot", name=name, extra=extra)
        return meta

    def restore(self, name: str) -> None:
        """Replace this guest's QEMU by one loaded from snapshot `name`; consoles stay attached."""
        self._call("restore", name=name)

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        return Path(self._call("screenshot", path=str(Path(path).resolve())))

    def qmp(self, command: str, **arguments: Any) -> Any:
        return self._call("qmp", command=command, arguments=arguments or None)

    # ----------------------------------------------------------- log, events

    @property
    def serial_log_path(self) -> Path:
        if self.folder is None:
            raise UnknownGuest("this Machine has not been started")
        return self.folder / "serial.log"

    def read_log(self, start: int = 0, length: int | None = None) -> bytes:
        """Serial log bytes from `start` (negative: from the end)."""
        return read_log(self.serial_log_path, start, length).data

    def read_log_remote(self, start: int = 0, length: int | None = None) -> bytes:
        result = self._call("log", start=start, length=length)
        return base64.b64decode(result["data"])

    def log_tail(self, lines: int = 15) -> str:
        return tail_lines(self.serial_log_path, lines)

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Event records (boots, actions, console sessions, refusals) at or after Unix time `since`."""
        if self.folder is None:
            return []
        return [e for e in EventLog.read(self.folder / "events.jsonl") if e["time"] >= since]

    def wait_for_event(
        self, match: Callable[[dict[str, Any]], bool] | str, timeout: float = 60.0, since: float | None = None
    ) -> dict[str, Any]:
        """The first event (recorded at or after `since`, default: now) that matches; raises on timeout."""
        test = (lambda e: e["event"] == match) if isinstance(match, str) else match
        since = time.time() if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event["time"] >= since and test(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching event within {timeout:.0f}s on {self.name}; last console lines:\n"
                                   f"{self.log_tail()}")
            if not self.is_running():
                raise GuestDied(f"the owner of {self.name} is gone; last console lines:\n{self.log_tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise GuestDied, with the last console lines, if QEMU is not running."""
        if not self.is_running():
            raise GuestDied(
                f"guest {self.name} is not running (its owner is gone); last console lines:\n{self.log_tail()}"
            )
        info = self.info()
        if info["state"] == "dead":
            died = [e for e in self.events() if e["event"] == "qemu_exited"]
            how = died[-1]["how"] if died else "unknown"
            raise GuestDied(
                f"QEMU of guest {self.name} exited unexpectedly ({how}); last console lines:\n{self.log_tail()}"
            )

    # --------------------------------------------------------------- console

    def open_console(self, mode: str = "harness", *, client: str | None = None, from_offset: int | None = None,
                     notices: bool = False, events: bool = False) -> tuple[socket.socket, dict[str, Any]]:
        """A console socket (after the handshake) and the owner's reply ({"offset": ...}).

        With `events` the stream is framed (emulator.protocol.FrameDecoder): guest bytes in data
        frames, session changes (takeover, stop) as events; without, the guest's raw bytes."""
        if self.folder is None:
            raise UnknownGuest("this Machine has not been started")
        return open_console(self.folder / "console.sock", mode, client=client or f"python:{os.getpid()}",
                            from_offset=from_offset, notices=notices, events=events)

    def __repr__(self) -> str:
        return f"Machine(name={self.name!r}, image={self.spec.image if self.spec else None!r})"
