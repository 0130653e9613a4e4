"""Cold boot of the distribution images: QEMU start to `login:` through sercon vs the bare QEMU command.

`bench_cold_boots(["debian-systemd", "debian-grub"])` returns one `record.Row` per image, with
`SERCON_BENCH_RUNS` boots (default 5) of each variant, interleaved:

- `bare_ms`: the QEMU command line sercon would run (`emulator.qemu_args`, `-snapshot` for the
  disk instead of the owner's qcow2 overlay), started here, its serial socket read directly;
- `sercon_ms`: `Machine(spec).start()` and a `Console` waiting for `login:` (owner process,
  serial log, event index, console fan-out all in the path).

The two alternate in ABBA order, so machine load affects both alike. The accelerator is the one sercon picks
(`SERCON_ACCEL=tcg` skips the KVM probe). Called by `tests/bench/bench.py` (`make bench`); also
runnable alone: `python tests/bench/bench_images.py debian-systemd debian-grub`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Row, interleaved  # noqa: E402

from emulator import Machine, firmware  # noqa: E402
from emulator.accel import choose_accel  # noqa: E402
from emulator.images import build_image  # noqa: E402
from emulator.qemu_args import find_qemu, qemu_args  # noqa: E402
from emulator.spec import GuestSpec  # noqa: E402
from harness.console import Console  # noqa: E402

DEFAULT_IMAGES = ["debian-systemd", "debian-grub", "debian-uefi", "debian-uefi-secureboot"]
LOGIN = b"login: "
TIMEOUT = 300.0


def _bare_boot(spec: GuestSpec, accel: str) -> float:
    """Milliseconds from starting the bare QEMU command to `login:` on its serial socket."""
    serial, serial_qemu = socket.socketpair()
    qmp, qmp_qemu = socket.socketpair()
    scratch = Path(tempfile.mkdtemp(prefix="sercon-bench-bare-"))
    # A UEFI guest gets its own copy of the variable store, as sercon's owner makes one.
    vars_file = firmware.vars_copy(spec.firmware_vars, scratch) if spec.firmware_vars else None
    args = qemu_args(spec, accel=accel, serial_fd=serial_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
                     name="bench-image-bare", qemu=find_qemu(), firmware_vars=str(vars_file) if vars_file else None)
    started = time.perf_counter()
    proc = subprocess.Popen(args, pass_fds=(serial_qemu.fileno(), qmp_qemu.fileno()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serial_qemu.close()
    qmp_qemu.close()
    try:
        buffer = b""
        deadline = time.monotonic() + TIMEOUT
        serial.settimeout(5)
        while LOGIN not in buffer:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError(f"bare QEMU for {spec.image}: no {LOGIN!r} within {TIMEOUT:.0f}s")
            try:
                chunk = serial.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise TimeoutError(f"bare QEMU for {spec.image} closed its serial port")
            buffer = buffer[-64:] + chunk
        return (time.perf_counter() - started) * 1000
    finally:
        proc.kill()
        proc.wait()
        serial.close()
        qmp.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _sercon_boot(spec: GuestSpec) -> float:
    started = time.perf_counter()
    machine = Machine(spec, name="bench-image").start()
    try:
        console = Console.for_machine(machine, from_offset=0)
        console.expect(LOGIN.decode(), timeout=TIMEOUT)
        elapsed = time.perf_counter() - started
        console.close()
        return elapsed * 1000
    finally:
        machine.stop()


def bench_cold_boots(images: list[str] | None = None, runs: int | None = None) -> list[Row]:
    """Cold boot to `login:` per image, sercon vs bare QEMU, interleaved (milliseconds)."""
    runs = runs or int(os.environ.get("SERCON_BENCH_RUNS", "5"))
    own_home = "SERCON_HOME" not in os.environ
    if own_home:
        os.environ["SERCON_HOME"] = tempfile.mkdtemp(prefix="sercon-bench-images-")
    rows: list[Row] = []
    try:
        for name in images or DEFAULT_IMAGES:
            row_id, label = f"boot.{name}", f"boot to login:, {name}"
            try:
                image = build_image(name)
            except Exception as exc:  # an image that cannot be built here is reported, not fatal
                rows.append(Row(row_id, label, "ms", {}, skipped=str(exc).splitlines()[0]))
                continue
            spec = image.spec
            accel, _reason = choose_accel(spec.accel, find_qemu(), spec.kernel)
            spec = spec.replace(accel=accel)
            samples = interleaved(runs, {"bare QEMU": functools.partial(_bare_boot, spec, accel),
                                         "sercon": functools.partial(_sercon_boot, spec)})
            size = sum(f.stat().st_blocks * 512 for f in image.path.iterdir() if f.is_file())
            rows.append(Row(row_id, label, "ms", samples, {"sercon": f"image on disk {size / 2**20:.0f} MiB"},
                            rounds=runs))
    finally:
        if own_home:
            os.environ.pop("SERCON_HOME", None)
    return rows


def main(argv: list[str]) -> int:
    for row in bench_cold_boots(argv or None):
        print(row.label, row.skipped or json.dumps(row.stats(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
