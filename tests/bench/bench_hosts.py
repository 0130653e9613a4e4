"""Where QEMU runs, side by side: a local process, a libvirt domain, a libvirt domain over SSH.

Three variants of `linux-initramfs`, measured interleaved (round robin, the order reversed every
other round, see record.interleaved):

- `local process`: the default, QEMU a child process of the guest's owner;
- `libvirt qemu:///system`: a transient domain of this machine's libvirtd (`emulator.libvirt_local`),
  COM1 through libvirt's console stream, actions through its API;
- `libvirt qemu+ssh (loopback sshd)`: the same libvirtd reached through a real OpenSSH server on
  127.0.0.1 (`emulator.ssh_loopback`): what the ssh transport costs, without network latency.

Rows (informational: no goal in record.GOALS):

- `hosts.boot`: `Machine(spec, host=...).start()` to `login:` on its console (owner start, libvirt
  connection and, over SSH, the SSH handshake included: each boot is a new owner);
- `hosts.rtt`: `LinuxShell.run("true")` round trips, in blocks, on one logged-in guest per variant;
- `hosts.sysrq`: `Machine.sysrq("h")` to `sysrq: HELP` on the console, on the same guests.

Sample counts: SERCON_BENCH_HOST_BOOTS (default 5 per variant), SERCON_BENCH_HOST_RTT (default 50
round trips per variant, in blocks of 10), SERCON_BENCH_HOST_SYSRQ (default 10 per variant). The
libvirt variants need root (libvirtd and sshd are started if missing); without them a row says why
it was skipped. `bench.py` runs this as section `hosts` (SERCON_BENCH_SKIP=hosts leaves it out);
alone: `python tests/bench/bench_hosts.py` prints the rows.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import Row, boot_to_login_ms, interleaved, run_true_ms  # noqa: E402

from emulator import Machine  # noqa: E402
from emulator.spec import GuestSpec  # noqa: E402
from harness.console import Console  # noqa: E402
from harness.linux import LinuxShell  # noqa: E402

BOOTS = int(os.environ.get("SERCON_BENCH_HOST_BOOTS", "5"))
RTT = int(os.environ.get("SERCON_BENCH_HOST_RTT", "50"))
SYSRQ = int(os.environ.get("SERCON_BENCH_HOST_SYSRQ", "10"))
RTT_BLOCK = 10
LOCAL, SYSTEM, SSH = "local process", "libvirt qemu:///system", "libvirt qemu+ssh (loopback sshd)"
NOTES = {
    LOCAL: "QEMU a child process of the owner",
    SYSTEM: "a transient domain of this machine's libvirtd; COM1 through libvirt's console stream",
    SSH: "the same libvirtd through a real OpenSSH server on 127.0.0.1: the ssh transport, no network latency",
}


def ms(seconds: float) -> float:
    return seconds * 1000


@contextmanager
def hosts_available() -> Iterator[tuple[dict[str, str | None], dict[str, str]]]:
    """The variants that can run here, by name -> host URI (None: local), and why the others cannot.
    The loopback sshd (if started) stops when the block ends."""
    hosts: dict[str, str | None] = {LOCAL: None}
    missing: dict[str, str] = {}
    with ExitStack() as stack:
        try:
            from emulator.libvirt_local import LocalLibvirtError, ensure_local_libvirt

            hosts[SYSTEM] = ensure_local_libvirt()
        except (ImportError, LocalLibvirtError) as exc:
            missing[SYSTEM] = missing[SSH] = f"skipped: no local libvirt host ({exc})"
        if SYSTEM in hosts:
            from emulator.ssh_loopback import LoopbackSshdError, loopback_sshd

            try:
                hosts[SSH] = stack.enter_context(loopback_sshd()).libvirt_uri()
            except (LoopbackSshdError, OSError) as exc:
                missing[SSH] = f"skipped: no loopback sshd ({exc})"
        yield hosts, missing


def bench_hosts(spec: GuestSpec) -> list[Row]:
    tag = secrets.token_hex(3)  # libvirt finds a guest's old domains by its name: never share one
    with hosts_available() as (hosts, missing):
        notes = {**{v: NOTES[v] for v in hosts}, **missing}
        for variant, why in missing.items():
            print(f"    hosts: {variant} {why}", flush=True)
        rows = [bench_boot(spec, hosts, notes, tag)]
        rows += bench_running(spec, hosts, notes, tag)
    return rows


def bench_boot(spec: GuestSpec, hosts: dict[str, str | None], notes: dict[str, str], tag: str) -> Row:
    count = [0]

    def boot(host: str | None) -> Callable[[], float]:
        def one() -> float:
            count[0] += 1
            return boot_to_login_ms(lambda: Machine(spec, name=f"bench-hb-{tag}-{count[0]}", host=host).start())
        return one

    samples = interleaved(BOOTS, {name: boot(host) for name, host in hosts.items()})
    return Row("hosts.boot", "boot to login: by host, linux-initramfs", "ms", samples, dict(notes), rounds=BOOTS)


def bench_running(spec: GuestSpec, hosts: dict[str, str | None], notes: dict[str, str], tag: str) -> list[Row]:
    """run("true") and SysRq latency on one logged-in guest per variant."""
    machines: dict[str, Machine] = {}
    shells: dict[str, LinuxShell] = {}
    try:
        for index, (name, host) in enumerate(hosts.items()):
            machines[name] = Machine(spec, name=f"bench-hr-{tag}-{index}", host=host).start()
        for name, machine in machines.items():
            shell = LinuxShell(Console.for_machine(machine))
            shell.login(spec.user or "root", spec.password, timeout=300)
            shell.run("true")
            shells[name] = shell

        def rtt_block(shell: LinuxShell) -> Callable[[], list[float]]:
            def block() -> list[float]:
                return run_true_ms(shell, RTT_BLOCK)
            return block

        def sysrq(machine: Machine, shell: LinuxShell) -> Callable[[], float]:
            def one() -> float:
                console = shell.console
                console.discard_buffered()
                started = time.perf_counter()
                machine.sysrq("h")
                console.expect("sysrq: HELP", timeout=60)
                elapsed = time.perf_counter() - started
                console.drain(quiet=0.2)  # the rest of the help text, before the next sample
                return ms(elapsed)
            return one

        rtt_rounds = max(1, RTT // RTT_BLOCK)
        rtt = interleaved(rtt_rounds, {n: rtt_block(s) for n, s in shells.items()})
        help_text = interleaved(SYSRQ, {n: sysrq(machines[n], s) for n, s in shells.items()})
        for shell in shells.values():
            shell.console.close()
    finally:
        for machine in machines.values():
            machine.stop()
    return [Row("hosts.rtt", 'run("true") by host, linux-initramfs', "ms", rtt, dict(notes), rounds=rtt_rounds),
            Row("hosts.sysrq", "SysRq h to its help text, by host", "ms", help_text, dict(notes), rounds=SYSRQ)]


def main() -> int:
    import tempfile

    from record import summary

    from emulator import resolve_image
    from emulator.accel import choose_accel
    from emulator.qemu_args import find_qemu

    os.environ.setdefault("SERCON_HOME", tempfile.mkdtemp(prefix="sercon-bench-hosts-"))
    spec = resolve_image("linux-initramfs")
    accel, reason = choose_accel(spec.accel, find_qemu(), spec.kernel)
    print(f"accelerator {accel} ({reason})")
    for row in bench_hosts(spec.replace(accel=accel)):
        for variant, values in row.samples.items():
            st = summary(values)
            print(f"{row.id:<12}{variant:<36}{st['n']:>4.0f} {st['p10']:>9.1f}{st['p50']:>9.1f}{st['p90']:>9.1f} ms")
        for variant, note in row.notes.items():
            if note.startswith("skipped"):
                print(f"{row.id:<12}{variant:<36}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
