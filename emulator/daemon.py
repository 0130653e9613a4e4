"""The owner process of one guest: `python -m emulator.daemon --name N --folder D --spec FILE`.

Started by `Machine.start()` (and so by `sercon up` and the pytest plugin) in its own session, so
it outlives the command that started it. It powers the guest on, serves the control socket, the
console socket and the RFC 2217 port, then reports one line on stdout, `READY {json}` or
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

from .console_socket import ConsoleServer
from .control import ControlServer
from .errors import SerconError
from .owner import ConsoleOwner
from .rfc2217 import Rfc2217Server
from .spec import GuestSpec


def _report(kind: str, payload: dict[str, object]) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def run(name: str, folder: Path, spec: GuestSpec, rfc2217_port: int, snapshot: str | None = None) -> int:
    owner = ConsoleOwner(name, spec, folder)
    control = ControlServer(owner, folder / "control.sock")
    console = ConsoleServer(owner, folder / "console.sock")
    rfc = Rfc2217Server(owner, port=rfc2217_port)
    try:
        await control.start()
        await console.start()
        port = await rfc.start()
        await owner.power_on(reason=f"restore {snapshot}" if snapshot else "power on", snapshot=snapshot)
    except (SerconError, OSError) as exc:
        await owner.stop()
        await control.close()
        await console.close()
        await rfc.close()
        _report("ERROR", {"type": type(exc).__name__ if isinstance(exc, SerconError) else "SerconError",
                          "message": str(exc)})
        return 1
    info = {"pid": os.getpid(), "rfc2217_port": port}
    (folder / "owner.json").write_text(json.dumps(info))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(owner.stop()))
    _report("READY", {**owner.info(), "rfc2217_port": port})
    await owner.stopped.wait()
    await control.close()
    await console.close()
    await rfc.close()
    (folder / "owner.json").unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator.daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path, help="GuestSpec JSON file")
    parser.add_argument("--rfc2217-port", type=int, default=0)
    parser.add_argument("--from-snapshot", default=None, help="load this snapshot instead of booting")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=args.folder / "owner.log", level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("qemu").setLevel(logging.WARNING)
    spec = GuestSpec.from_json(args.spec.read_text())
    return asyncio.run(run(args.name, args.folder, spec, args.rfc2217_port, args.from_snapshot))


if __name__ == "__main__":
    sys.exit(main())
