"""`make bench`: sercon's speed against baselines measured in the same run, on the same machine.

Every row compares variants measured *interleaved* (ABBA order, see record.interleaved), so load
that drifts during the run falls on all of them alike, and keeps every sample: the report gives
n, p10, p50 and p90 per variant and judges each goal in record.GOALS from a bootstrap 95%
confidence interval (met / missed / undecided).

- boot: QEMU start to `login:` through sercon (owner process, log, fan-out) vs the same QEMU
  command run bare, its serial socket read here.
- round trip: `LinuxShell.run("true")`; a raw write/read loop on the same guest and the same
  socket (the fair floor); a raw loop on a bare QEMU's socket; labgrid's QEMUDriver + ShellDriver
  on the same kernel and initramfs, as its users run it (its own QEMU and socket); and labgrid
  through sercon's RFC 2217 port, kept apart because pyserial's RFC 2217 client sleeps 50 ms on
  every port reconfigure, which labgrid's SerialDriver triggers on each read.
- SysRq and NMI: the action call to the kernel's answer on the console.
- snapshots: cold boot to a logged-in shell vs restoring a snapshot taken there (as a new guest,
  and into a running guest), per image; and the memory (PSS) of ten guests restored from one
  snapshot against ten booted ones.
- images: boot to `login:` of the distribution images, sercon vs bare (bench_images.py).
- web: throughput, echo, viewers through `sercon serve` vs the raw QEMU socket (bench_web.py).
- hosts: boot, run("true") and SysRq with QEMU as a local process, a libvirt domain
  (qemu:///system) and a libvirt domain over SSH (qemu+ssh:// through a loopback sshd), side by
  side (bench_hosts.py; its sample counts are SERCON_BENCH_HOST_*).

Writes tests/bench/results/bench.json (with date, commit, host, cores, QEMU version) after every
section, so a section that fails or hangs late loses none of the rows before it; report.py prints
it, plots it and writes the README's table from it. Sample counts: SERCON_BENCH_BOOTS (default
20), SERCON_BENCH_ROUNDS (10 blocks of SERCON_BENCH_BLOCK=20 round trips), SERCON_BENCH_RUNS
(default 5: snapshot rows, web rows), SERCON_BENCH_VIEWER_RUNS (the viewers row; default
SERCON_BENCH_RUNS), SERCON_BENCH_IMAGE_RUNS (default 3 boots of each variant of each distribution
image), SERCON_BENCH_SNAPSHOT_IMAGES and SERCON_BENCH_BOOT_IMAGES (comma lists), SERCON_BENCH_SKIP
(comma list of boot,rtt,actions,snapshots,memory,images,web,hosts). The settings a run was given
are recorded with it, and the README's figures say how to run it again.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Row, boot_to_login_ms, environment, interleaved, machine_meta, run_true_ms, save  # noqa: E402

from emulator import Machine, paths, resolve_image  # noqa: E402
from emulator.accel import choose_accel  # noqa: E402
from emulator.local_qemu import SPARE_DELAY_S  # noqa: E402
from emulator.qemu_args import find_qemu, qemu_args  # noqa: E402
from emulator.spec import GuestSpec  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.linux import LinuxShell  # noqa: E402

BOOTS = int(os.environ.get("SERCON_BENCH_BOOTS", "20"))
ROUNDS = int(os.environ.get("SERCON_BENCH_ROUNDS", "10"))
BLOCK = int(os.environ.get("SERCON_BENCH_BLOCK", "20"))
RUNS = int(os.environ.get("SERCON_BENCH_RUNS", "5"))
IMAGE_RUNS = int(os.environ.get("SERCON_BENCH_IMAGE_RUNS", "3"))
SKIP = set(filter(None, os.environ.get("SERCON_BENCH_SKIP", "").split(",")))


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

    def login_raw(self, user: str, password: str, marker: bytes) -> None:
        """Log in by hand and set a marker prompt with echo and line editing off."""
        self.read_until(b"login: ")
        self.send(f"{user}\r".encode())
        self.read_until(b"assword: ")
        self.send(f"{password}\r".encode())
        self.read_until(b"# ")
        self.send(b"set +o emacs; stty -echo; PS1='" + marker[:3] + b"''" + marker[3:] + b"'\r")
        self.read_until(marker)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.serial.close()
        self.qmp.close()


def ms(seconds: float) -> float:
    return seconds * 1000


# ------------------------------------------------------------------------------------ boot


def bench_boot(spec: GuestSpec, accel: str) -> Row:
    def bare() -> float:
        guest = BareGuest(spec, accel)
        try:
            return ms(guest.read_until(b"login: ") - guest.started)
        finally:
            guest.close()

    def sercon() -> float:
        return boot_to_login_ms(lambda: Machine(spec, name="bench-boot").start(), timeout=120)

    samples = interleaved(BOOTS, {"bare QEMU": bare, "sercon": sercon})
    return Row("boot.linux-initramfs", "boot to login:, linux-initramfs", "ms", samples,
               {"sercon": "owner process, serial log, fan-out in the path"}, rounds=BOOTS)


# ------------------------------------------------------------------------------ round trip


def bench_round_trip(spec: GuestSpec, accel: str) -> Row:
    user, password = spec.user or "root", spec.password or ""
    bare = BareGuest(spec, accel)
    machine = Machine(spec, name="bench-rtt").start()
    peers: list[Any] = []
    try:
        bare_marker = b"__rawx_0_# "
        bare.login_raw(user, password, bare_marker)
        shell = LinuxShell(Console.for_machine(machine))
        shell.login(user, password)
        sock = shell.console._sock
        assert sock is not None
        marker = f"__sc{shell.nonce}_0_# ".encode()

        def block_raw_bare() -> list[float]:
            out = []
            for _ in range(BLOCK):
                start = time.perf_counter()
                bare.send(b"true\r")
                out.append(ms(bare.read_until(bare_marker) - start))
            return out

        def block_raw_owner() -> list[float]:
            out = []
            for _ in range(BLOCK):
                start = time.perf_counter()
                sock.sendall(b"true\r")
                got = b""
                while marker not in got:
                    got += sock.recv(65536)
                out.append(ms(time.perf_counter() - start))
            return out

        def block_sercon() -> list[float]:
            return run_true_ms(shell, BLOCK)

        blocks: dict[str, Callable[[], float | list[float]]] = {
            "sercon run()": block_sercon,
            "raw loop, same socket": block_raw_owner,
            "raw loop, bare QEMU": block_raw_bare,
        }
        notes = {
            "raw loop, same socket": "one write + one read on the guest sercon runs, echo and line editing off",
            "raw loop, bare QEMU": "a second guest, QEMU's own socket, no owner in the path",
        }
        from bench_labgrid import LabgridPeer

        def peer(name: str, note: str, make: Callable[[], Any], count: int) -> None:
            try:
                made = make()
            except Exception as exc:  # a peer is optional (PyPI unreachable, labgrid broke): say why
                notes[name] = f"skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                return
            peers.append(made)
            blocks[name] = lambda: made.block(count)
            notes[name] = note

        peer("labgrid QEMUDriver", "labgrid 26.0.1 QEMUDriver + ShellDriver on the same kernel and initramfs",
             lambda: LabgridPeer.qemu_driver(spec, accel), BLOCK)

        def via_rfc2217() -> Any:
            other = Machine(spec, name="bench-rtt-rfc2217", rfc2217=True).start()
            peers.append(other)  # stopped with the peers
            return LabgridPeer.rfc2217(other.info()["rfc2217_port"], spec)

        peer("labgrid via RFC 2217", "labgrid's SerialDriver on a second sercon guest's RFC 2217 port: pyserial "
             "sleeps 50 ms per port reconfigure, which the SerialDriver makes on every read",
             via_rfc2217, max(1, BLOCK // 4))
        samples = interleaved(ROUNDS, dict(blocks))
        return Row("rtt", 'run("true") round trip, linux-initramfs', "ms", samples, notes, rounds=ROUNDS)
    finally:
        for made in reversed(peers):
            made.stop() if isinstance(made, Machine) else made.close()
        machine.stop()
        bare.close()


# ------------------------------------------------------------------------- actions


def bench_actions(spec: GuestSpec) -> list[Row]:
    machine = Machine(spec, name="bench-actions").start()
    try:
        console = Console.for_machine(machine)
        console.expect("login: ", timeout=120)

        def latency(action: Callable[[], Any], answer: str) -> Callable[[], float]:
            def one() -> float:
                console.discard_buffered()
                start = time.perf_counter()
                action()
                console.expect(answer, timeout=30)
                return ms(time.perf_counter() - start)
            return one

        samples = interleaved(20, {"SysRq h to the help text": latency(lambda: machine.sysrq("h"), "sysrq: HELP"),
                                   "NMI to the kernel's message": latency(machine.nmi, "Dazed and confused")})
        console.close()
    finally:
        machine.stop()
    return [Row("actions", "action to its answer on the console", "ms", samples, rounds=20)]


# ----------------------------------------------------------------------- snapshots


def bench_snapshots(image: str, accel: str) -> Row:
    """Cold boot to a logged-in shell vs restore of a snapshot taken there."""
    row_id, label = f"snapshot.{image}", f"to a logged-in shell, {image}"
    try:
        spec = resolve_image(image).replace(accel=accel)
    except Exception as exc:  # an image that cannot be built here is reported, not fatal
        return Row(row_id, label, "ms", {}, skipped=str(exc).splitlines()[0])
    nonce = ""
    count = [0]

    def cold() -> float:
        nonlocal nonce
        standbys_settled()
        count[0] += 1
        started = time.perf_counter()
        machine = Machine(spec, name=f"bench-cold-{count[0]}").start()
        try:
            shell = LinuxShell(Console.for_machine(machine))
            shell.login(spec.user or "root", spec.password, timeout=300)
            elapsed = time.perf_counter() - started
            if not nonce:
                machine.snapshot(f"bench-{image}", nonce=shell.nonce)
                nonce = shell.nonce
            shell.console.close()
            return ms(elapsed)
        finally:
            machine.stop()

    warmed: set[bool] = set()

    def restore(standby: bool) -> Callable[[], float]:
        """A new guest from the snapshot. With standbys on, the fork server has one loaded from
        the previous sample (the first sample is preceded by one untimed start, which makes it)."""
        def sample() -> float:
            with environment(SERCON_RESTORE_SPARE="1" if standby else "0"):  # picks the fork server
                if standby not in warmed:  # the first start of a setting may spawn its fork server
                    warmed.add(standby)       # (a plain owner, no standby): the second is forked
                    for attempt in range(2):
                        warm = f"bench-restore-warm-{int(standby)}-{attempt}"
                        Machine(spec, name=warm, from_snapshot=f"bench-{image}").start().stop()
                standbys_settled()
                count[0] += 1
                started = time.perf_counter()
                machine = Machine(spec, name=f"bench-restore-{count[0]}", from_snapshot=f"bench-{image}").start()
            try:
                shell = LinuxShell.resume(Console.for_machine(machine, from_offset=None), nonce)
                elapsed = time.perf_counter() - started
                shell.console.close()
                return ms(elapsed)
            finally:
                machine.stop()
        return sample

    def restore_in_place(spare: bool) -> Callable[[], float]:
        """A guest restored in place once (with spares on, it then loads one), then timed. Each
        sample has a guest of its own, stopped after it: no guest of the bench idles, and no spare
        loads, while another variant is timed."""
        def sample() -> float:
            standbys_settled()
            count[0] += 1
            with environment(SERCON_RESTORE_SPARE="1" if spare else "0"):  # read by the owner
                machine = Machine(spec, name=f"bench-in-place-{count[0]}", from_snapshot=f"bench-{image}").start()
            try:
                machine.restore(f"bench-{image}")
                if spare:
                    wait_for_spare(machine)
                standbys_settled()  # the one its own start made
                started = time.perf_counter()
                machine.restore(f"bench-{image}")
                shell = LinuxShell.resume(Console.for_machine(machine, from_offset=None), nonce)
                shell.run("true")
                elapsed = time.perf_counter() - started
                shell.console.close()
                return ms(elapsed)
            finally:
                machine.stop()
        return sample

    samples = interleaved(RUNS, {"cold boot": cold, "restore": restore(True),  # the first cold boot saves it
                                 "restore, no standby": restore(False),
                                 "restore into a running guest": restore_in_place(True),
                                 "restore into a running guest, no spare": restore_in_place(False)})
    return Row(row_id, label, "ms", samples, {
        "restore": "a new guest from the snapshot, until its shell answers: the fork server's standby owner, "
                   "loaded from it after the previous new guest, becomes its owner",
        "restore, no standby": "the same with SERCON_RESTORE_SPARE=0: an owner is forked, its QEMU starts, loads",
        "restore into a running guest": "`restore` on a running guest, then `run(\"true\")`: the paused QEMU the "
                                        "owner loaded after the previous restore takes over (spare PSS: QEMU PSS row)",
        "restore into a running guest, no spare": "the same with SERCON_RESTORE_SPARE=0: a new QEMU starts and loads"},
        rounds=RUNS)


def wait_for_spare(machine: Machine, timeout: float = 60.0) -> int:
    """The pid of the paused QEMU the owner loads after a restore in place, once it has loaded."""
    deadline = time.monotonic() + timeout
    while True:
        spare = machine.info()["restore_spare"]
        if spare and spare["ready"]:
            return int(spare["qemu_pid"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{machine.name}: no spare QEMU loaded within {timeout:.0f}s ({spare})")
        time.sleep(0.02)


def standbys_settled(timeout: float = 30.0) -> None:
    """Until every standby owner of the fork servers (emulator/standby.py) has loaded its QEMU, or
    given up: no sample is timed beside a load started by the sample before it."""
    time.sleep(SPARE_DELAY_S + 0.05)  # a standby starts loading that long after its request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [p.read_text(errors="replace") for p in (paths.home() / "standby").glob("*/standby.log")]
        if all(any(done in text for done in STANDBY_DONE) for text in logs):
            return
        time.sleep(0.02)


def standby_qemus(snapshot: str) -> list[int]:
    """The QEMUs standby owners loaded from `snapshot` that still run (a standby that became a
    guest's owner included: its QEMU is that guest's)."""
    pids = []
    for log in (paths.home() / "standby").glob("*/standby.log"):
        text = log.read_text(errors="replace")
        for found in re.finditer(rf"spare QEMU (\d+) loaded from snapshot {re.escape(snapshot)}\b", text):
            if Path(f"/proc/{found.group(1)}").exists():
                pids.append(int(found.group(1)))
    return pids


#: What a standby's log says once its load ended, loaded or not (emulator/local_qemu.py, standby.py).
STANDBY_DONE = ("spare QEMU", "no spare QEMU", "nothing loaded")


def pss_mib(pid: int) -> float:
    """Proportional set size of one process: shared pages count a fraction per sharer."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def bench_memory(spec: GuestSpec, guests: int = 10) -> Row:
    """PSS of each QEMU, `guests` of them at a shell at once: booted, then restored from one snapshot."""
    samples: dict[str, list[float]] = {}
    nonce = ""  # the shell's marker in the snapshot the booted variant saves
    for variant in ("booted", "restored"):
        running: list[Machine] = []
        try:
            for index in range(guests):
                if variant == "booted":
                    machine = Machine(spec, name=f"bench-mem-boot-{index}").start()
                    shell = LinuxShell(Console.for_machine(machine))
                    shell.login(spec.user or "root", spec.password)
                    if index == 0:
                        machine.snapshot("bench-memory", nonce=shell.nonce)
                        nonce = shell.nonce
                else:
                    machine = Machine(spec, name=f"bench-mem-restore-{index}", from_snapshot="bench-memory").start()
                    shell = LinuxShell.resume(Console.for_machine(machine, from_offset=None), nonce)
                running.append(machine)
                shell.run("true")
                shell.console.close()
            samples[variant] = [pss_mib(int(m.info()["qemu_pid"])) for m in running]
            if variant == "restored":  # the fork server's standby, loaded from it for the next new guest
                standbys_settled()
                samples["standby"] = [pss_mib(pid) for pid in standby_qemus("bench-memory")
                                      if pid not in {int(m.info()["qemu_pid"]) for m in running}]
            if variant == "restored":  # each restored in place once more: the owner loads a spare
                for machine in running:
                    machine.restore("bench-memory")
                samples["restore spare"] = [pss_mib(wait_for_spare(m)) for m in running]
        finally:
            for machine in running:
                machine.stop()
    return Row("memory", f"QEMU PSS per guest, {guests} guests at a shell at once", "MiB", samples,
               {"restored": "all from one snapshot: RAM pages shared until a guest writes them",
                "restore spare": "the paused QEMU a guest restored in place keeps for its next restore, "
                                 "in addition to its own",
                "standby": "the paused QEMU the fork server's standby owner keeps for the next new guest"})


# ---------------------------------------------------------------------------- main


def main() -> int:
    home = tempfile.mkdtemp(prefix="sercon-bench-")
    os.environ["SERCON_HOME"] = home
    spec = resolve_image("linux-initramfs")
    accel, reason = choose_accel(spec.accel, find_qemu(), spec.kernel)
    spec = spec.replace(accel=accel)
    # The sample counts this run was given, so the report can say how to run it again.
    settings = {k: v for k, v in sorted(os.environ.items())
                if k.startswith("SERCON_BENCH_") and k != "SERCON_BENCH_WRITE"}
    meta = {**machine_meta(), "accel": accel, "settings": settings}
    print(f"sercon bench: accelerator {accel} ({reason}), {os.cpu_count()} CPUs; {BOOTS} boots, "
          f"{ROUNDS}x{BLOCK} round trips, {RUNS} runs per snapshot/image row", flush=True)
    rows: list[Row] = []
    snapshot_images = [i for i in os.environ.get("SERCON_BENCH_SNAPSHOT_IMAGES", "linux-initramfs,debian-systemd")
                       .split(",") if i]
    boot_images = [i for i in os.environ.get(
        "SERCON_BENCH_BOOT_IMAGES", "debian-systemd,debian-grub,debian-uefi,debian-uefi-secureboot").split(",") if i]

    def section(name: str, make: Callable[[], Row | list[Row]]) -> None:
        if name in SKIP:
            return
        started = time.monotonic()
        print(f"  {name} ...", flush=True)
        try:
            made = make()
        except Exception as exc:  # one broken section is reported; the others still run
            traceback.print_exc()
            made = Row(name, name, "ms", {}, skipped=f"failed: {exc}".splitlines()[0])
        rows.extend(made if isinstance(made, list) else [made])
        save(meta, rows)  # after every section: a later section that hangs or dies loses none of these
        print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)

    section("boot", lambda: bench_boot(spec, accel))
    section("rtt", lambda: bench_round_trip(spec, accel))
    section("actions", lambda: bench_actions(spec))
    for image in snapshot_images:
        section("snapshots", lambda image=image: bench_snapshots(image, accel))  # type: ignore[misc]
    section("memory", lambda: bench_memory(spec))

    def images_rows() -> list[Row]:
        from bench_images import bench_cold_boots

        return bench_cold_boots(boot_images, runs=IMAGE_RUNS)

    def web_rows() -> list[Row]:
        from bench_web import run_all

        return run_all()

    def hosts_rows() -> list[Row]:
        from bench_hosts import bench_hosts

        return bench_hosts(spec)

    section("images", images_rows)
    section("web", web_rows)
    section("hosts", hosts_rows)
    # The home stays for its logs; its fork servers, and their standby owners, end now.
    shutil.rmtree(Path(home) / "forkserver", ignore_errors=True)
    from report import main as report

    return report(["--write"] if os.environ.get("SERCON_BENCH_WRITE", "1") == "1" else [])


if __name__ == "__main__":
    sys.exit(main())
