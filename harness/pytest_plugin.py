"""The sercon pytest plugin (registered through the `pytest11` entry point as `sercon`).

Fixtures:
- `sercon_spec`: the GuestSpec of `--sercon-image` (built on first use).
- `guest` / `shell`: one booted guest and a logged-in `LinuxShell` on it, shared by the whole
  session (tests that only read and run commands).
- `fresh_guest` / `fresh_shell`: a guest of their own for one test (panic, power cycle, reset).
- `make_guest`: a factory, `make_guest(append_extra="sysctl.kernel.unknown_nmi_panic=1")`, for
  guests with other settings; each is stopped at the end of its test.
- `restored_guest` / `restored_shell`: a guest of the test's own, loaded (a fraction of a second; README Speed) from a
  snapshot taken at a logged-in shell (made once, by booting and logging in, and cached across
  sessions). What a test does to it (panic, reboot, SysRq c) cannot reach the next test.

Options: `--sercon-image NAME|PATH`, `--sercon-accel auto|tcg|kvm`, `--sercon-home DIR` (default:
a temporary folder, printed at the end so you can `SERCON_HOME=DIR sercon attach NAME` while the
tests run), `--sercon-keep` (leave guests running after the session, for debugging),
`--sercon-prompt REGEX` / `--sercon-login-prompt REGEX` (a shell or login prompt sercon does not
recognise by itself; also `SERCON_PROMPT` / `SERCON_LOGIN_PROMPT`).

When a test fails, the tail of the serial log of every guest it used is added to the report.
At the end, a console-path report lists each guest: accelerator, boots, events, log path.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator import DEFAULT_IMAGE, GuestSpec, Machine, resolve_image
from emulator.host_uri import check_host_uri, display

from .console import Console
from .linux import LinuxShell

_STARTED: list[Machine] = []
_NOTES: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sercon", "sercon virtual serial console")
    group.addoption("--sercon-image", default=os.environ.get("SERCON_IMAGE", DEFAULT_IMAGE),
                    help="image recipe name or kernel/disk path for the guest fixtures (default: %(default)s)")
    group.addoption("--sercon-host", action="append", default=None, metavar="URI",
                    help="run the guest fixtures' QEMU on this libvirt host (qemu:///system, "
                         "qemu+ssh://[user@]host/system); repeat it to spread xdist workers over several hosts "
                         "(default: $SERCON_HOST, space-separated; none: QEMU on this machine)")
    group.addoption("--sercon-accel", choices=("auto", "tcg", "kvm"), default=None,
                    help="accelerator for guests (default: $SERCON_ACCEL or auto-probe)")
    group.addoption("--sercon-home", default=None, help="SERCON_HOME for test guests (default: a temporary folder)")
    group.addoption("--sercon-keep", action="store_true", help="leave the guests running after the session")
    group.addoption("--sercon-prompt", default=os.environ.get("SERCON_PROMPT"),
                    help="regular expression for the guest's shell prompt when sercon does not recognise it "
                    "(matched against the text left of the cursor, colours removed)")
    group.addoption("--sercon-login-prompt", default=os.environ.get("SERCON_LOGIN_PROMPT"),
                    help="regular expression for the getty's login prompt, likewise")


_PROMPTS: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    accel = config.getoption("--sercon-accel")
    if accel:
        os.environ["SERCON_ACCEL"] = accel
    # Also known where pyproject.toml's list is not read (pytest --pyargs harness.readiness_suite elsewhere).
    config.addinivalue_line("markers", "guest: boots a real guest under QEMU")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    _PROMPTS["shell"] = config.getoption("--sercon-prompt")
    _PROMPTS["login"] = config.getoption("--sercon-login-prompt")


@pytest.fixture(scope="session")
def sercon_home(request: pytest.FixtureRequest) -> Iterator[Path]:
    chosen = request.config.getoption("--sercon-home")
    # Short, not under pytest's deep tmp folders: unix socket paths must stay under 108 bytes.
    home = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="sercon-"))
    previous = os.environ.get("SERCON_HOME")
    os.environ["SERCON_HOME"] = str(home)
    yield home  # kept afterwards: the report points at its serial logs
    if previous is None:
        os.environ.pop("SERCON_HOME", None)
    else:
        os.environ["SERCON_HOME"] = previous


def sercon_hosts(config: pytest.Config) -> list[str]:
    """The libvirt hosts given with --sercon-host (or $SERCON_HOST); empty: QEMU on this machine."""
    hosts: list[str] = config.getoption("--sercon-host") or os.environ.get("SERCON_HOST", "").split()
    return hosts


def pytest_report_header(config: pytest.Config) -> str | None:
    hosts = sercon_hosts(config)
    return f"sercon hosts: {', '.join(display(h) for h in hosts)}" if hosts else None


@pytest.fixture(scope="session")
def sercon_host(request: pytest.FixtureRequest) -> str | None:
    """This session's (or this xdist worker's) libvirt host: worker gwN takes host N modulo their
    number, so `-n 4 --sercon-host A --sercon-host B` runs two workers' share of the suite on each."""
    hosts = sercon_hosts(request.config)
    if not hosts:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return check_host_uri(hosts[index % len(hosts)])


@pytest.fixture(scope="session")
def sercon_spec(request: pytest.FixtureRequest, sercon_host: str | None) -> GuestSpec:
    return resolve_image(str(request.config.getoption("--sercon-image")), host=sercon_host)


def _guest_name(request: pytest.FixtureRequest) -> str:
    """A name that says which test booted the guest, unique in the session."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name.removeprefix("test_"))[:32].strip("-.") or "guest"
    return f"{base}-{len(_STARTED) + 1}"


def _start(request: pytest.FixtureRequest, spec: GuestSpec, **overrides: Any) -> Machine:
    machine = Machine(spec, name=_guest_name(request), **overrides).start()
    _STARTED.append(machine)
    return machine


def _stop(request: pytest.FixtureRequest, machine: Machine) -> None:
    if not request.config.getoption("--sercon-keep"):
        machine.stop()


def _login(machine: Machine) -> LinuxShell:
    shell = LinuxShell(Console.for_machine(machine), shell_prompt=_PROMPTS.get("shell"),
                       login_prompt=_PROMPTS.get("login"))
    spec = machine.spec
    shell.login((spec.user or "root") if spec else "root", spec.password if spec else "sercon")
    return shell


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest, sercon_home: Path, sercon_spec: GuestSpec) -> Iterator[Machine]:
    """A guest shared by the session, started (it may still be booting: `shell` waits for its login)."""
    machine = _start(request, sercon_spec)
    yield machine
    _stop(request, machine)


@pytest.fixture(scope="session")
def shell(guest: Machine) -> Iterator[LinuxShell]:
    """A logged-in shell on the shared guest."""
    sh = _login(guest)
    yield sh
    sh.console.close()


@pytest.fixture
def fresh_guest(request: pytest.FixtureRequest, sercon_home: Path, sercon_spec: GuestSpec) -> Iterator[Machine]:
    """A guest of this test's own."""
    machine = _start(request, sercon_spec)
    yield machine
    _stop(request, machine)


@pytest.fixture
def fresh_shell(fresh_guest: Machine) -> Iterator[LinuxShell]:
    sh = _login(fresh_guest)
    yield sh
    sh.console.close()


@pytest.fixture
def make_guest(request: pytest.FixtureRequest, sercon_home: Path, sercon_spec: GuestSpec) -> Iterator[
        Callable[..., Machine]]:
    """`make_guest(spec=None, append_extra=..., **GuestSpec fields)`: guests stopped after the test."""
    made: list[Machine] = []

    def factory(spec: GuestSpec | None = None, append_extra: str | None = None, **fields: Any) -> Machine:
        base = spec or sercon_spec
        if append_extra:
            from emulator.images import _insert_before_console

            fields["append"] = _insert_before_console(base.append, append_extra)
        machine = _start(request, base.replace(**fields))
        made.append(machine)
        return machine

    yield factory
    for machine in made:
        _stop(request, machine)


def register(machine: Machine) -> Machine:
    """Include a guest started outside these fixtures in the end-of-session report."""
    if machine not in _STARTED:
        _STARTED.append(machine)
    return machine


LOGIN_SNAPSHOT = "logged-in"


@pytest.fixture(scope="session")
def login_snapshot(request: pytest.FixtureRequest, sercon_home: Path, sercon_spec: GuestSpec) -> str:
    """The name of a snapshot of `sercon_spec` at a logged-in shell; made once, then reused.

    Made under a lock, so parallel workers (pytest -n) make it once. A stale, foreign or corrupt
    snapshot is reported by the owner (SnapshotError) and made again.
    """
    import fcntl

    from emulator import paths
    from emulator.errors import SnapshotError

    lock_file = paths.cache() / "snapshots" / f".{LOGIN_SNAPSHOT}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        probe = Machine(sercon_spec, name=f"snapshot-check-{os.getpid()}", from_snapshot=LOGIN_SNAPSHOT)
        try:
            probe.start()
            probe.stop()
            return LOGIN_SNAPSHOT
        except SnapshotError as exc:
            _NOTES.append(f"made snapshot {LOGIN_SNAPSHOT!r}: {str(exc).splitlines()[0]}")
        maker = Machine(sercon_spec, name=f"snapshot-make-{os.getpid()}").start()
        try:
            shell = _login(maker)
            maker.snapshot(LOGIN_SNAPSHOT, nonce=shell.nonce, user=shell.logged_in_as)
            shell.console.close()
        finally:
            maker.stop()
    return LOGIN_SNAPSHOT


@pytest.fixture
def restored_guest(request: pytest.FixtureRequest, login_snapshot: str, sercon_spec: GuestSpec) -> Iterator[Machine]:
    """A guest of this test's own, restored from the logged-in snapshot."""
    machine = Machine(sercon_spec, name=_guest_name(request), from_snapshot=login_snapshot).start()
    _STARTED.append(machine)
    yield machine
    _stop(request, machine)


@pytest.fixture
def restored_shell(restored_guest: Machine) -> Iterator[LinuxShell]:
    """The logged-in shell of `restored_guest`, ready for `run()`."""
    meta = restored_guest.info()["snapshot"]
    console = Console.for_machine(restored_guest, from_offset=None)
    shell = LinuxShell.resume(console, meta["extra"]["nonce"], meta["extra"].get("user") or "root")
    yield shell
    console.close()


def login(machine: Machine) -> LinuxShell:
    """A logged-in LinuxShell on `machine` with its image's credentials (for tests that reboot)."""
    return _login(machine)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    seen: set[str] = set()
    for value in getattr(item, "funcargs", {}).values():
        machine = value if isinstance(value, Machine) else getattr(getattr(value, "console", None), "machine", None)
        if isinstance(machine, Machine) and machine.name and machine.name not in seen:
            seen.add(machine.name)
            try:
                tail = machine.log_tail(40)
            except OSError:
                continue
            report.sections.append((f"sercon serial log of {machine.name} (last 40 lines)", tail))


def _report_lines() -> list[str]:
    """The console-path report of the guests this process started (one line each, then notes)."""
    home = os.environ.get("SERCON_HOME") or (str(_STARTED[0].folder.parent.parent) if _STARTED[0].folder else "")
    lines = [f"guests: {len(_STARTED)}   SERCON_HOME={home}"]
    for machine in _STARTED:
        events = machine.events()
        kinds: dict[str, int] = {}
        for event in events:
            kinds[event["event"]] = kinds.get(event["event"], 0) + 1
        accel = next((e.get("accel") for e in events if e["event"] == "power_on"), "?")
        boots = max((e.get("boot", 0) for e in events), default=0)
        size = machine.serial_log_path.stat().st_size if machine.serial_log_path.exists() else 0
        summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if not k.startswith("console_"))
        lines.append(f"  {machine.name:<22} accel={accel:<4} boots={boots:<3} log={size:>8} B  {summary}")
    lines.append("  (serial logs and events.jsonl stay in each guest's folder under SERCON_HOME)")
    lines += [f"  {note}" for note in _NOTES]
    return lines


#: Reports that pytest-xdist workers sent back (worker id, lines), for the controller to print.
_WORKER_REPORTS: list[tuple[str, list[str]]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In an xdist worker: hand the report to the controller, whose terminal is the one shown."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and _STARTED:
        workeroutput["sercon_report"] = _report_lines()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    lines = getattr(node, "workeroutput", {}).get("sercon_report")
    if lines:
        _WORKER_REPORTS.append((str(node.gateway.id), list(lines)))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _STARTED and not _WORKER_REPORTS:
        return
    tr = terminalreporter
    tr.section("sercon console-path report")
    if _STARTED:
        for line in _report_lines():
            tr.write_line(line)
    for worker, lines in sorted(_WORKER_REPORTS):
        tr.write_line(f"worker {worker}: {lines[0]}")
        for line in lines[1:]:
            tr.write_line(line)
