"""`make bench`: sercon's speed against baselines measured in the same run, on the same machine.

- boot: QEMU start to `login:` through sercon (owner process, log, fan-out) vs the same QEMU
  command run bare with the test reading its serial socket directly (goal: overhead under 3%).
- round trip: median `LinuxShell.run("true")` vs one raw write/read round trip on a bare QEMU's
  serial socket with the same marker prompt (goal: at most 1.2x the raw floor), and vs labgrid's
  ShellDriver (pinned, in its own venv; see bench_labgrid.py) on the same guest type.
- SysRq and NMI latency: action call to the kernel's answer on the console.
- snapshots: cold boot to a logged-in shell vs restoring a snapshot taken there, per image
  (goal: restore at most 1 s, and at least 10x faster for the systemd and GRUB images).

Prints a table and writes tests/bench/results/bench.json. Ratios, not absolute times, are the
result: this machine is shared, so absolute numbers move from run to run.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from emulator import Machine, resolve_image  # noqa: E402
from emulator.accel import choose_accel  # noqa: E402
from emulator.qemu_args import find_qemu, qemu_args  # noqa: E402
from emulator.spec import GuestSpec  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.linux import LinuxShell  # noqa: E402

RUNS = int(os.environ.get("SERCON_BENCH_RUNS", "5"))
ROUND_TRIPS = int(os.environ.get("SERCON_BENCH_ROUND_TRIPS", "200"))
RESULTS = ROOT / "tests" / "bench" / "results"


class BareGuest:
    """The same QEMU command sercon would run, with the benchmark holding the serial socket itself."""

    def __init__(self, spec: GuestSpec, accel: str) -> None:
        self.serial, serial_qemu = socket.socketpair()
        self.qmp, qmp_qemu = socket.socketpair()
        args = qemu_args(spec, accel=accel, serial_fd=serial_qemu.fileno(), qmp_fd=qmp_qemu.fileno(),
                         name="bench-bare", qemu=find_qemu())
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(args, pass_fds=(serial_qemu.fileno(), qmp_qemu.fileno()),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serial_qemu.close()
        qmp_qemu.close()
        self.buffer = b""

    def read_until(self, pattern: bytes, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        self.serial.settimeout(timeout)
        while pattern not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare guest: no {pattern!r}")
            self.buffer += self.serial.recv(65536)
        self.buffer = self.buffer[self.buffer.index(pattern) + len(pattern):]
        return time.perf_counter()

    def send(self, data: bytes) -> None:
        self.serial.sendall(data)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.serial.close()
        self.qmp.close()


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench_boot(spec: GuestSpec, accel: str) -> dict[str, Any]:
    bare_times, sercon_times = [], []
    for _ in range(RUNS):
        bare = BareGuest(spec, accel)
        try:
            bare_times.append(bare.read_until(b"login: ") - bare.started)
        finally:
            bare.close()
        started = time.perf_counter()
        machine = Machine(spec, name="bench-boot").start()
        try:
            console = Console.for_machine(machine)
            console.expect("login: ", timeout=120)
            sercon_times.append(time.perf_counter() - started)
            console.close()
        finally:
            machine.stop()
    bare_ms, sercon_ms = median_ms(bare_times), median_ms(sercon_times)
    return {"bare_ms": bare_ms, "sercon_ms": sercon_ms, "ratio": sercon_ms / bare_ms,
            "overhead_pct": (sercon_ms / bare_ms - 1) * 100, "runs": RUNS}


def bench_round_trip(spec: GuestSpec, accel: str) -> dict[str, Any]:
    # Raw floor: a bare QEMU, logged in by hand, the same marker prompt, one write and one read.
    bare = BareGuest(spec, accel)
    try:
        bare.read_until(b"login: ")
        bare.send(f"{spec.user}\r".encode())
        bare.read_until(b"assword: ")
        bare.send(f"{spec.password}\r".encode())
        bare.read_until(b"# ")
        bare.send(b"set +o emacs; stty -echo; PS1='__raw'\"x\"'_$?_# '\r")
        bare.read_until(b"__rawx_0_# ")
        raw: list[float] = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            bare.send(b"true\r")
            raw.append(bare.read_until(b"__rawx_0_# ") - start)
    finally:
        bare.close()
    machine = Machine(spec, name="bench-rtt").start()
    try:
        shell = LinuxShell(Console.for_machine(machine))
        shell.login(spec.user or "root", spec.password)
        # The same raw loop through sercon's console socket: what the owner process adds.
        sock = shell.console._sock
        assert sock is not None
        marker = f"__sc{shell.nonce}_0_# ".encode()
        via_owner: list[float] = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            sock.sendall(b"true\r")
            got = b""
            while marker not in got:
                got += sock.recv(65536)
            via_owner.append(time.perf_counter() - start)
        ours: list[float] = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            shell.run("true")
            ours.append(time.perf_counter() - start)
    finally:
        machine.stop()
    raw_ms, ours_ms, owner_ms = median_ms(raw), median_ms(ours), median_ms(via_owner)
    return {"raw_ms": raw_ms, "raw_via_owner_ms": owner_ms, "sercon_ms": ours_ms, "ratio": ours_ms / raw_ms,
            "ratio_same_socket": ours_ms / owner_ms, "samples": ROUND_TRIPS}


def _latency(machine: Machine, console: Console, action: Callable[[], Any], answer: str) -> float:
    console.discard_buffered()
    start = time.perf_counter()
    action()
    console.expect(answer, timeout=30)
    return time.perf_counter() - start


def bench_actions(spec: GuestSpec) -> dict[str, Any]:
    machine = Machine(spec, name="bench-actions").start()
    try:
        console = Console.for_machine(machine)
        console.expect("login: ", timeout=120)
        sysrq = [_latency(machine, console, lambda: machine.sysrq("h"), "sysrq: HELP") for _ in range(10)]
        nmi = [_latency(machine, console, machine.nmi, "Dazed and confused") for _ in range(10)]
        console.close()
    finally:
        machine.stop()
    return {"sysrq_ms": median_ms(sysrq), "nmi_ms": median_ms(nmi), "samples": 10}


def bench_snapshots(image_names: list[str], accel: str) -> list[dict[str, Any]]:
    """Cold boot to a logged-in shell vs restore of a snapshot taken there, per image."""
    rows = []
    for image in image_names:
        try:
            spec = resolve_image(image).replace(accel=accel)
        except Exception as exc:  # an image that cannot be built here is reported, not fatal
            rows.append({"image": image, "skipped": str(exc).splitlines()[0]})
            continue
        cold: list[float] = []
        restore: list[float] = []
        nonce = ""
        for run in range(max(1, RUNS // 2)):
            started = time.perf_counter()
            machine = Machine(spec, name=f"bench-cold-{run}").start()
            try:
                shell = LinuxShell(Console.for_machine(machine))
                shell.login(spec.user or "root", spec.password, timeout=300)
                cold.append(time.perf_counter() - started)
                if run == 0:
                    machine.snapshot(f"bench-{image}", nonce=shell.nonce)
                    nonce = shell.nonce
                shell.console.close()
            finally:
                machine.stop()
        for run in range(RUNS):
            started = time.perf_counter()
            machine = Machine(spec, name=f"bench-restore-{run}", from_snapshot=f"bench-{image}").start()
            try:
                shell = LinuxShell.resume(Console.for_machine(machine, from_offset=None), nonce)
                restore.append(time.perf_counter() - started)
                shell.console.close()
            finally:
                machine.stop()
        cold_ms, restore_ms = median_ms(cold), median_ms(restore)
        rows.append({"image": image, "cold_ms": cold_ms, "restore_ms": restore_ms, "speedup": cold_ms / restore_ms})
    return rows


def main() -> int:
    home = tempfile.mkdtemp(prefix="sercon-bench-")
    os.environ["SERCON_HOME"] = home
    spec = resolve_image("linux-initramfs")
    accel, reason = choose_accel(spec.accel, find_qemu(), spec.kernel)
    spec = spec.replace(accel=accel)
    print(f"sercon bench: linux-initramfs, accelerator {accel} ({reason}), {os.cpu_count()} CPUs, {RUNS} boots each")
    results: dict[str, Any] = {"accel": accel, "time": time.time()}
    results["boot"] = bench_boot(spec, accel)
    results["round_trip"] = bench_round_trip(spec, accel)
    try:
        from bench_labgrid import bench_labgrid

        results["labgrid"] = bench_labgrid(spec)
    except Exception as exc:  # the peer is optional: no network to PyPI, or it broke
        results["labgrid"] = {"skipped": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    results["actions"] = bench_actions(spec)
    images = os.environ.get("SERCON_BENCH_IMAGES", "linux-initramfs,debian-systemd,debian-grub").split(",")
    results["snapshots"] = bench_snapshots([i for i in images if i], accel)
    for name, module, function in (("images", "bench_images", "bench_cold_boots"),
                                   ("web", "bench_web", "run_all")):
        try:
            mod = __import__(module)
            results[name] = getattr(mod, function)()
        except (ImportError, AttributeError) as exc:
            results[name] = {"skipped": str(exc)}
    boot, rtt, actions = results["boot"], results["round_trip"], results["actions"]
    print()
    print(f"{'measure':<34}{'baseline':>12}{'sercon':>12}{'ratio':>8}  goal")
    print(f"{'boot to login: (median)':<34}{boot['bare_ms']:>10.0f}ms{boot['sercon_ms']:>10.0f}ms"
          f"{boot['ratio']:>8.3f}  overhead < 3% ({boot['overhead_pct']:+.1f}%)")
    label = 'run("true") round trip (median)'
    print(f"{label:<34}{rtt['raw_ms']:>10.2f}ms{rtt['sercon_ms']:>10.2f}ms"
          f"{rtt['ratio']:>8.2f}  <= 1.2x raw floor")
    labgrid = results["labgrid"]
    if "skipped" in labgrid:
        print(f"{'labgrid run(true)':<34} skipped: {labgrid['skipped']}")
    else:
        label = f"labgrid {labgrid['version']} run('true')"
        print(f"{label:<34}{labgrid['median_ms']:>10.2f}ms{rtt['sercon_ms']:>10.2f}ms"
              f"{labgrid['median_ms'] / rtt['sercon_ms']:>7.0f}x  sercon >= 2x faster than labgrid")
    label = "  same, raw loop on sercon's socket"
    print(f"{label:<34}{rtt['raw_via_owner_ms']:>10.2f}ms{rtt['sercon_ms']:>10.2f}ms{rtt['ratio_same_socket']:>8.2f}"
          "  (harness cost alone)")
    print(f"{'SysRq h -> help on console':<34}{'':>12}{actions['sysrq_ms']:>10.1f}ms")
    print(f"{'NMI -> kernel message on console':<34}{'':>12}{actions['nmi_ms']:>10.1f}ms")
    print(f"\n{'restore vs cold boot, to a shell':<34}{'cold':>12}{'restore':>12}{'speedup':>8}  goal")
    for row in results["snapshots"]:
        if "skipped" in row:
            print(f"  {row['image']:<32} skipped: {row['skipped']}")
        else:
            print(f"  {row['image']:<32}{row['cold_ms']:>10.0f}ms{row['restore_ms']:>10.0f}ms{row['speedup']:>7.1f}x"
                  "  restore <= 1 s, >= 10x for systemd/GRUB")
    for name in ("images", "web"):
        if "skipped" not in results[name]:
            print(f"\n{name}: {json.dumps(results[name], indent=2)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults: {RESULTS / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
