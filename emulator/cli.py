"""The `sercon` command line.

    sercon up [IMAGE] [--name N]         boot a guest in the background (IMAGE: recipe or kernel/disk path)
    sercon ls                            running guests
    sercon attach N [--read-only]        raw terminal; Ctrl+] for the menu (SysRq, NMI, reset, ...)
    sercon sysrq N KEYS                  BREAK + key, per key ("h", "reisub")
    sercon nmi|reset|restart|power-cycle|send-break N   (these from the operations table)
    sercon log N [--start OFF] [--follow]
    sercon events N
    sercon screenshot N FILE.png
    sercon snapshot N SNAP | sercon restore N SNAP | sercon snapshots | sercon up --from-snapshot SNAP
    sercon qmp N COMMAND [JSON-ARGS]
    sercon down N|--all
    sercon image list|build NAME

Errors are one line on stderr (plus the guest's last console lines where they help) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

from . import images, paths, settings
from .errors import ConsoleBusy, SerconError, UnknownGuest
from .escape import Command, Data, EscapeParser, Unknown, help_text
from .host_uri import display
from .machine import Machine
from .operations import OPERATIONS, lookup
from .protocol import FrameDecoder
from .qemu_args import find_qemu
from .serial_log import read_log
from .sysrq import parse_keys
from .trust import scrub_label


def _machine(name: str) -> Machine:
    return Machine.attach(name)


# ------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    if not args.host:
        find_qemu()  # before any image build: say which package is missing first
    overrides: dict[str, Any] = {
        "memory_mb": args.memory, "cpus": args.cpus, "accel": args.accel, "policy": args.policy,
        "machine": args.machine, "host": args.host,
    }
    if args.kernel or args.disk:
        from .spec import GuestSpec

        spec = GuestSpec(kernel=_abs(args.kernel), initrd=_abs(args.initrd), append=args.append or "console=ttyS0",
                         disk=_abs(args.disk), image=args.image)
        if args.append_extra:
            spec = spec.replace(append=images._insert_before_console(spec.append, args.append_extra))
        machine = Machine(spec, name=args.name, from_snapshot=args.from_snapshot, rfc2217=args.rfc2217,
                          **overrides)
    else:
        image = args.image or images.DEFAULT_IMAGE
        if args.append:
            overrides["append"] = args.append
        if args.append_extra:
            overrides["append_extra"] = args.append_extra
        spec = images.resolve_image(image, **overrides)
        machine = Machine(spec, name=args.name, from_snapshot=args.from_snapshot, rfc2217=args.rfc2217)
    machine.start()
    info = machine.info()
    print(f"guest {machine.name} is {info['state']} (accelerator {info['accel']}: {info['accel_reason']})")
    print(f"  console:   sercon attach {machine.name}")
    if info.get("rfc2217_port"):
        print(f"  rfc2217:   rfc2217://127.0.0.1:{info['rfc2217_port']} (UNAUTHENTICATED: any local user can type "
              "into this console; every connection is recorded in `sercon events`)")
    print(f"  serial log {info['serial_log']}")
    print(f"  sockets:   {machine.folder}/console.sock, {machine.folder}/control.sock")
    if machine.spec and machine.spec.user:
        print(f"  login:     {machine.spec.user} / {machine.spec.password}")
    return 0


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def print_table(columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout (rich): aligned on a terminal, and whole lines when piped (no wrapping)."""
    from rich import box
    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True, justify="right" if column in ("BOOT", "SIZE", "RFC2217") else "left")
    for row in rows:
        table.add_row(*("-" if cell is None or cell == "" else str(cell) for cell in row))
    console = RichConsole(width=None if sys.stdout.isatty() else 1000, highlight=False)
    console.print(table)


def cmd_ls(args: argparse.Namespace) -> int:
    names = Machine.running()
    if not names:
        print(f"no running guests under {paths.guests_dir()}")
        return 0
    rows = []
    for name in names:
        try:
            info = Machine(name=name).info()
        except SerconError:
            continue
        rows.append([name, info["state"], info["boot"], info.get("host") or "local", info["accel"], info.get("image"),
                     info.get("rfc2217_port"), info.get("interactive")])
    print_table(["NAME", "STATE", "BOOT", "HOST", "ACCEL", "IMAGE", "RFC2217", "INTERACTIVE"], rows)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    print_table(["SETTING", "VALUE", "FROM", "WHAT"], [list(row) for row in settings.table()])
    return 0


def cmd_operation(args: argparse.Namespace) -> int:
    """The simple operations (emulator.operations, simple_cli): arguments as the table gives them."""
    op = lookup(args.command)
    kwargs = {arg.name: getattr(args, arg.name) for arg in op.args}
    if op.name == "sysrq":
        parse_keys(args.keys)  # a bad key is reported before contacting the guest
    machine = _machine(args.name)
    result = machine.call(op.name, **kwargs)
    if op.name == "sysrq":
        print(f"sent SysRq {''.join(result)} to {args.name}")
    else:
        print(f"{op.cli_name}: done ({args.name}, boot {machine.boot})")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    path = paths.guest_dir(args.name) / "serial.log"
    if not path.exists():
        raise UnknownGuest(f"no serial log for {args.name!r} under {paths.guests_dir()}")
    chunk = read_log(path, args.start, args.length)
    out = sys.stdout.buffer
    out.write(chunk.data)
    out.flush()
    if not args.follow:
        return 0
    offset = chunk.start + len(chunk.data)
    try:
        while True:
            chunk = read_log(path, offset)
            if chunk.data:
                out.write(chunk.data)
                out.flush()
                offset += len(chunk.data)
            elif not Machine(name=args.name).is_running():
                return 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        return 0


def cmd_events(args: argparse.Namespace) -> int:
    machine = Machine(name=args.name)
    for event in machine.events():
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        extra = {k: v for k, v in event.items() if k not in ("time", "event", "offset", "name", "boot")}
        print(f"{stamp} boot {event.get('boot', '?'):<3} @{event['offset']:<9} {event['event']:<18} "
              f"{json.dumps(extra) if extra else ''}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.name == "rm":  # `sercon snapshot rm NAME`, as `sercon snapshots rm NAME`
        args.names = [args.snapshot]
        return cmd_snapshots_rm(args)
    meta = _machine(args.name).snapshot(args.snapshot)
    print(f"saved snapshot {args.snapshot} of {args.name} ({meta['size'] / 1e6:.0f} MB); "
          f"start guests from it with `sercon up --from-snapshot {args.snapshot}`")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    _machine(args.name).restore(args.snapshot)
    print(f"{args.name} restored from snapshot {args.snapshot}")
    return 0


def cmd_snapshots_rm(args: argparse.Namespace) -> int:
    from .snapshots import remove

    for name in args.names:
        folders = remove(name)
        print(f"removed snapshot {name} ({len(folders)} version{'s' if len(folders) != 1 else ''})")
    return 0


def cmd_snapshots_prune(args: argparse.Namespace) -> int:
    from .qemu_args import find_qemu
    from .snapshots import discard, size_on_disk, stale

    try:
        qemu: str | None = find_qemu()
    except SerconError:
        qemu = None
    found = stale(qemu)
    if not found:
        print("no stale snapshots")
    total = 0
    for folder, why in found:
        size = size_on_disk(folder)
        total += size
        print(f"{'would remove' if args.dry_run else 'removed'} {folder.name} ({size / 1e6:.0f} MB): {why}")
        if not args.dry_run:
            discard(folder)
    if found:
        print(f"{'would free' if args.dry_run else 'freed'} {total / 1e6:.0f} MB")
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from .snapshots import list_snapshots, size_on_disk

    found = list_snapshots()
    if not found:
        print("no snapshots; save one with `sercon snapshot GUEST NAME`")
    rows = [[meta["name"], meta.get("image"),
             f"{(meta.get('host_size') or size_on_disk(Path(meta['folder']))) / 1e6:.0f} MB",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created", 0))), meta.get("guest"),
             display(meta["host"]) if meta.get("host") else "local", meta["key"]]
            for meta in found]
    if rows:
        print_table(["NAME", "IMAGE", "SIZE", "MADE", "FROM GUEST", "HOST", "KEY"], rows)
    return 0


def cmd_screenshot(args: argparse.Namespace) -> int:
    path = _machine(args.name).screenshot(args.file)
    print(f"screenshot of {args.name} written to {path}")
    return 0


def cmd_qmp(args: argparse.Namespace) -> int:
    arguments = json.loads(args.arguments) if args.arguments else {}
    print(json.dumps(_machine(args.name).qmp(args.qmp_command, **arguments), indent=2))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    names = Machine.running() if args.all else [args.name]
    if not names or names == [None]:
        raise SerconError("name a guest, or use --all")
    for name in names:
        machine = Machine(name=name)
        if not machine.is_running():
            raise UnknownGuest(f"no running guest named {name!r}; `sercon ls` lists them")
        machine.stop()
        print(f"{name} stopped (its serial log stays in {machine.folder})")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in images.list_recipes():
            print(name)
        return 0
    names = images.list_recipes() if args.all else args.names
    if not names:
        raise SerconError("name an image to build (see `sercon image list`), or use --all")
    for name in names:
        image = images.build_image(name, force=args.force)
        print(f"{name}: {image.path}")
    return 0


# --------------------------------------------------------------------- attach


def cmd_attach(args: argparse.Namespace) -> int:
    machine = _machine(args.name)
    mode = "read" if args.read_only else "interactive"
    while True:
        outcome = _attach_once(machine, mode, args.replay)
        if outcome != "reconnect":
            return 0
        args.replay = 0


def _attach_once(machine: Machine, mode: str, replay: int) -> str:
    from_offset = -replay if replay else None
    try:
        sock, _reply = machine.open_console(mode, client=f"cli:{os.environ.get('USER', 'user')}:{os.getpid()}",
                                            from_offset=from_offset, notices=True, events=True)
    except ConsoleBusy as exc:
        raise SerconError(f"{exc}") from None
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    _write(stdout, f"[sercon] attached to {machine.name} ({mode}); Ctrl+] ? for the menu, Ctrl+] q to detach\r\n")
    parser = EscapeParser()
    frames = FrameDecoder()
    closed: dict[str, Any] = {}
    try:
        if is_tty:
            tty.setraw(stdin)
        while True:
            ready, _, _ = select.select([sock, stdin], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return _after_disconnect(machine, stdin, stdout, saved, closed)
                # Guest bytes arrive in data frames; session changes as events the guest cannot forge.
                for frame in frames.feed(data):
                    if frame.kind == "data":
                        _write(stdout, frame.data)
                    elif frame.event and frame.event.get("type") == "closed":
                        closed = frame.event
                    elif frame.event and frame.event.get("type") == "notice":
                        _write(stdout, f"\r\n[sercon] {scrub_label(frame.event.get('text', ''))}\r\n")
            if stdin in ready:
                typed = os.read(stdin, 4096)
                if not typed:
                    return "quit"
                for action in parser.feed(typed):
                    if isinstance(action, Data):
                        if mode != "read":
                            sock.sendall(action.data)
                    elif isinstance(action, Unknown):
                        _write(stdout, f"\r\n[sercon] unknown menu key {action.key!r}\r\n" + help_text())
                    elif isinstance(action, Command):
                        if _menu(machine, action.key, stdin, stdout, saved) == "quit":
                            _write(stdout, "\r\n[sercon] detached; the guest keeps running\r\n")
                            return "quit"
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()


def _after_disconnect(machine: Machine, stdin: int, stdout: int, saved: list[Any] | None,
                      closed: dict[str, Any]) -> str:
    why = {"takeover": f": {scrub_label(closed.get('by', 'someone'))} took over the console",
           "stopped": ": the guest was shut down", "dropped": ": it fell too far behind (the log has every byte)",
           }.get(str(closed.get("reason")), "")
    if saved is None or not machine.is_running():
        _write(stdout, f"\r\n[sercon] the console connection was closed{why}\r\n")
        return "quit"
    _write(stdout, f"\r\n[sercon] The serial console connection was closed{why}. To reconnect, press Enter "
                   "(any other key quits).\r\n")
    key = os.read(stdin, 1)
    return "reconnect" if key in (b"\r", b"\n") else "quit"


def _menu(machine: Machine, key: str, stdin: int, stdout: int, saved: list[Any] | None) -> str:
    try:
        if key == "q":
            return "quit"
        if key == "?":
            _write(stdout, "\r\n" + help_text())
        elif key == "s":
            keys = _prompt_line("\r\n[sercon] SysRq key or sequence (e.g. h, reisub): ", stdin, stdout, saved)
            if keys:
                machine.sysrq(keys)
                _write(stdout, f"[sercon] sent SysRq {keys}\r\n")
        elif key == "n":
            machine.nmi()
            _write(stdout, "\r\n[sercon] NMI sent\r\n")
        elif key == "b":
            machine.send_break()
            _write(stdout, "\r\n[sercon] BREAK sent\r\n")
        elif key == "r":
            machine.reset()
            _write(stdout, "\r\n[sercon] reset\r\n")
        elif key == "R":
            _write(stdout, "\r\n[sercon] restart requested (ACPI power button)...\r\n")
            machine.restart()
        elif key == "p":
            _write(stdout, "\r\n[sercon] power cycling...\r\n")
            machine.power_cycle()
        elif key == "l":
            _write(stdout, f"\r\n[sercon] serial log: {machine.serial_log_path}\r\n")
    except SerconError as exc:
        _write(stdout, f"\r\n[sercon] {exc}\r\n".replace("\n", "\r\n").replace("\r\r", "\r"))
    return "continue"


def _prompt_line(prompt: str, stdin: int, stdout: int, saved: list[Any] | None) -> str:
    _write(stdout, prompt)
    line = b""
    while True:
        ch = os.read(stdin, 1)
        if ch in (b"\r", b"\n", b""):
            _write(stdout, "\r\n")
            return line.decode(errors="replace").strip()
        if ch in (b"\x7f", b"\x08"):
            if line:
                line = line[:-1]
                _write(stdout, "\b \b")
        elif ch == b"\x03":
            _write(stdout, "^C\r\n")
            return ""
        else:
            line += ch
            _write(stdout, ch)


def _write(fd: int, data: str | bytes) -> None:
    os.write(fd, data.encode() if isinstance(data, str) else data)


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sercon", description="Virtual serial consoles for real guests.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="boot a guest in the background")
    up.add_argument("image", nargs="?", help=f"recipe name (default {images.DEFAULT_IMAGE}) or a kernel/disk file")
    up.add_argument("--name", help="guest name (default: IMAGE-N)")
    up.add_argument("--kernel", help="kernel file (bzImage or ELF vmlinux)")
    up.add_argument("--initrd", help="initrd/initramfs for --kernel")
    up.add_argument("--append", help="kernel command line (replaces the image's)")
    up.add_argument("--append-extra", help="kernel arguments added before the console= arguments")
    up.add_argument("--disk", help="disk image (qcow2 or raw)")
    up.add_argument("--memory", type=int, help="memory in MiB")
    up.add_argument("--cpus", type=int)
    up.add_argument("--machine", help="QEMU machine type (default pc)")
    up.add_argument("--host", metavar="URI",
                    help="run QEMU on this libvirt host (qemu:///system, qemu+ssh://[user@]host/system); "
                         "the console owner stays here")
    up.add_argument("--accel", choices=("auto", "tcg", "kvm"))
    up.add_argument("--policy", choices=("takeover", "reject"), help="second interactive user: take over or refuse")
    up.add_argument("--from-snapshot", metavar="NAME", help="load a saved snapshot instead of booting")
    up.add_argument("--rfc2217", action="store_true",
                    help="also serve COM1 as an RFC 2217 port on 127.0.0.1 (no authentication: any local user "
                         "can use it; connections are recorded in the events)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("ls", help="list running guests").set_defaults(func=cmd_ls)
    sub.add_parser("settings", help="the SERCON_* settings in effect, and what each does").set_defaults(
        func=cmd_settings)

    attach = sub.add_parser("attach", help="interactive console (Ctrl+] for the menu)")
    attach.add_argument("name")
    attach.add_argument("--read-only", action="store_true", help="watch without typing")
    attach.add_argument("--replay", type=int, default=1024, help="show this many bytes of recent output first")
    attach.set_defaults(func=cmd_attach)

    for op in OPERATIONS.values():
        if not op.simple_cli:
            continue
        p = sub.add_parser(op.cli_name, help=op.summary)
        p.add_argument("name")
        for arg in op.args:
            kind = {"str": str, "int": int, "float": float}[arg.kind]
            if arg.required:
                p.add_argument(arg.name, type=kind, help=arg.help)
            else:
                p.add_argument(f"--{arg.name.replace('_', '-')}", dest=arg.name, type=kind, default=arg.default,
                               help=f"{arg.help} (default {arg.default})")
        p.set_defaults(func=cmd_operation)

    log = sub.add_parser("log", help="print the serial log")
    log.add_argument("name")
    log.add_argument("--start", type=int, default=0, help="byte offset; negative counts from the end")
    log.add_argument("--length", type=int, default=None)
    log.add_argument("--follow", "-f", action="store_true", help="keep printing new output")
    log.set_defaults(func=cmd_log)

    events = sub.add_parser("events", help="boots, resets, panics, actions, with log offsets")
    events.add_argument("name")
    events.set_defaults(func=cmd_events)

    snap = sub.add_parser("snapshot", help="save a running guest's whole state (sercon up --from-snapshot)")
    snap.add_argument("name")
    snap.add_argument("snapshot", metavar="SNAPSHOT")
    snap.set_defaults(func=cmd_snapshot)

    restore = sub.add_parser("restore", help="load a snapshot into a running guest (console stays attached)")
    restore.add_argument("name")
    restore.add_argument("snapshot", metavar="SNAPSHOT")
    restore.set_defaults(func=cmd_restore)

    snaps = sub.add_parser("snapshots", help="list saved snapshots; `snapshots rm NAME`, `snapshots prune`")
    snaps.set_defaults(func=cmd_snapshots)
    snap_sub = snaps.add_subparsers(dest="snapshots_command")
    snap_rm = snap_sub.add_parser("rm", help="delete snapshots by name (every version of each)")
    snap_rm.add_argument("names", nargs="+", metavar="NAME")
    snap_rm.set_defaults(func=cmd_snapshots_rm)
    prune = snap_sub.add_parser("prune", help="delete snapshots no guest will load again (rebuilt image, "
                                "another QEMU, an older format, unfinished saves)")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.set_defaults(func=cmd_snapshots_prune)

    shot = sub.add_parser("screenshot", help="save the guest's screen as PNG")
    shot.add_argument("name")
    shot.add_argument("file")
    shot.set_defaults(func=cmd_screenshot)

    qmp = sub.add_parser("qmp", help="run a raw QMP command (recorded in the events)")
    qmp.add_argument("name")
    qmp.add_argument("qmp_command", metavar="COMMAND")
    qmp.add_argument("arguments", nargs="?", help="JSON object of arguments")
    qmp.set_defaults(func=cmd_qmp)

    down = sub.add_parser("down", help="stop a guest (its logs stay)")
    down.add_argument("name", nargs="?")
    down.add_argument("--all", action="store_true")
    down.set_defaults(func=cmd_down)

    image = sub.add_parser("image", help="list or build image recipes")
    image.add_argument("action", choices=("list", "build"))
    image.add_argument("names", nargs="*")
    image.add_argument("--all", action="store_true")
    image.add_argument("--force", action="store_true", help="rebuild even if cached")
    image.set_defaults(func=cmd_image)

    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Commands implemented in other modules, passed their remaining arguments untouched."""
    for name, text in (
        ("check", "check an image's serial-console readiness (sercon check --help)"),
        ("serve", "web console and SSH front end for a fleet (sercon serve --help)"),
        ("user", "manage fleet users: sercon user add FLEET USER"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(*DELEGATED[name]))


def _delegate(module: str, function: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        import importlib

        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise SerconError(f"`sercon {args.command}` is not available in this installation ({exc})") from exc
        result: int = target(args.rest)
        return result

    return run


DELEGATED = {
    "check": ("harness.readiness", "check_main"),
    "serve": ("emulator.gateway.serve", "serve_main"),
    "user": ("emulator.gateway.serve", "user_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        # These commands parse their own arguments (including --help).
        args = argparse.Namespace(command=argv[0], rest=argv[1:], func=_delegate(*DELEGATED[argv[0]]))
    else:
        args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except SerconError as exc:
        print(f"sercon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
