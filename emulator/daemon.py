"""The owner process of one guest: `python -m emulator.daemon --name N --folder D --spec FILE`.

Started by `Machine.start()` (and so by `sercon up` and the pytest plugin) in its own session, so
it outlives the command that started it. It powers the guest on, serves the control socket, the
console socket and, only when asked (`--rfc2217`), the RFC 2217 port, then reports one line on stdout, `READY {json}` or
`ERROR {json}`, and detaches from it. It ends on `stop` (sercon down) or SIGTERM, taking QEMU
with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import event_loop
from .console_socket import ConsoleServer
from .control import ControlServer
from .errors import SerconError
from .owner import ConsoleOwner
from .spec import GuestSpec
from .trust import private_dir

if TYPE_CHECKING:
    from .local_qemu import LocalQemu


def _report(kind: str, payload: dict[str, object]) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def run(name: str, folder: Path, spec: GuestSpec, rfc2217_port: int | None,
              snapshot: str | None = None, standby: LocalQemu | None = None) -> int:
    """Serve one guest; `rfc2217_port` None: no RFC 2217 port (the default), 0: any free port.
    `standby`: the backend of the standby owner this process was (emulator/standby.py), whose
    QEMU, loaded from `snapshot`, this guest takes."""
    owner = ConsoleOwner(name, spec, folder)
    if standby is not None:
        from .local_qemu import LocalQemu

        if isinstance(owner.backend, LocalQemu):
            owner.backend.take_standby(standby)
    control = ControlServer(owner, folder / "control.sock")
    console = ConsoleServer(owner, folder / "console.sock")
    rfc = None
    if rfc2217_port is not None:
        # Only when asked: it (and pyserial's RFC 2217 module) adds ~2.5 ms of imports to every owner start.
        from .rfc2217 import Rfc2217Server

        rfc = Rfc2217Server(owner, port=rfc2217_port)
    port = None
    try:
        await control.start()
        await console.start()
        if rfc is not None:
            port = await rfc.start()
            owner.record("rfc2217_open", address=f"127.0.0.1:{port}", authenticated=False)
        await owner.power_on(reason=f"restore {snapshot}" if snapshot else "power on", snapshot=snapshot)
    except (SerconError, OSError) as exc:
        await owner.stop()
        await control.close()
        await console.close()
        if rfc is not None:
            await rfc.close()
        _report("ERROR", {"type": type(exc).__name__ if isinstance(exc, SerconError) else "SerconError",
                          "message": str(exc)})
        return 1
    info = {"pid": os.getpid(), "rfc2217_port": port}
    (folder / "owner.json").write_text(json.dumps(info))  # 0600: the owner runs under umask 077
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(owner.stop()))
    _report("READY", {**owner.info(), "rfc2217_port": port})
    await owner.stopped.wait()
    await control.close()
    await console.close()
    if rfc is not None:
        await rfc.close()
    (folder / "owner.json").unlink(missing_ok=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emulator.daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path, help="GuestSpec JSON file")
    parser.add_argument("--rfc2217", action="store_true",
                        help="also serve COM1 as an unauthenticated RFC 2217 port on 127.0.0.1")
    parser.add_argument("--rfc2217-port", type=int, default=0, help="with --rfc2217: this port (0: any free one)")
    parser.add_argument("--from-snapshot", default=None, help="load this snapshot instead of booting")
    return parser


#: Built at import: in an owner forked from the fork server, building it took 3 ms of each start.
PARSER = _parser()


def setup(argv: list[str] | None) -> tuple[argparse.Namespace, GuestSpec]:
    """What an owner does before its event loop: its arguments, umask, folder, log and spec."""
    args = PARSER.parse_args(argv)
    # Everything this process and QEMU create (logs, sockets, owner.json, overlays) is private.
    os.umask(0o077)
    private_dir(args.folder)
    logging.basicConfig(
        filename=args.folder / "owner.log", level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True,  # a standby logged elsewhere
    )
    logging.getLogger("qemu").setLevel(logging.WARNING)
    return args, GuestSpec.from_json(args.spec.read_text())


def main(argv: list[str] | None = None) -> int:
    args, spec = setup(argv)
    port = args.rfc2217_port if args.rfc2217 else None
    return event_loop.run(run(args.name, args.folder, spec, port, args.from_snapshot))


if __name__ == "__main__":
    sys.exit(main())
