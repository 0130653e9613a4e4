"""The labgrid peer in `make bench`: its ShellDriver's `run("true")` on the same guest, in blocks.

labgrid is installed, pinned, in a throw-away venv under `$SERCON_CACHE/bench/` (never in the
project's venv). A peer is a child process in that venv that keeps its target up and answers
"N" on stdin with N round-trip times (ms, one JSON list per line), so the bench interleaves its
blocks with sercon's own. Two ways in:

- `LabgridPeer.qemu_driver(spec, accel)`: as labgrid's users run QEMU, with its QEMUDriver on the
  same kernel, initramfs, command line, machine and memory as sercon's guest, through the serial
  socket labgrid makes itself. This is the fair comparison.
- `LabgridPeer.rfc2217(port, spec)`: through sercon's RFC 2217 port as a NetworkSerialPort, as
  labgrid reaches a board behind ser2net. pyserial's RFC 2217 client sleeps 50 ms whenever the
  port is reconfigured, and labgrid's SerialDriver changes the timeout on every read, so this row
  measures that sleep more than either tool; it is kept apart, with that reason beside it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from emulator import paths
from emulator.qemu_args import find_qemu
from emulator.spec import GuestSpec

LABGRID_VERSION = "26.0.1"

SERVER = """
import json, sys, time
from labgrid import Environment
target = Environment(sys.argv[1]).get_target("main")
power = target.get_driver("PowerProtocol", name=None) if sys.argv[2] == "qemu" else None
if power is not None:
    target.activate(power)
    power.on()
shell = target.get_driver("ShellDriver")
target.activate(shell)
print("ready", flush=True)
for line in sys.stdin:
    if not line.strip().isdigit():
        break
    samples = []
    for _ in range(int(line)):
        start = time.perf_counter()
        out, err, code = shell.run("true")
        assert code == 0, (out, err, code)
        samples.append((time.perf_counter() - start) * 1000)
    print(json.dumps(samples), flush=True)
if power is not None:
    power.off()
"""


def labgrid_python() -> Path:
    venv = paths.cache() / "bench" / f"labgrid-{LABGRID_VERSION}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"labgrid=={LABGRID_VERSION}"], check=True)
    return python


def _shell_driver(spec: GuestSpec) -> dict[str, Any]:
    return {"prompt": "~ # ", "login_prompt": " login: ", "username": spec.user or "root",
            "password": spec.password or "", "login_timeout": 120}


class LabgridPeer:
    def __init__(self, config: dict[str, Any], kind: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="sercon-labgrid-")
        env = Path(self._tmp.name) / "env.yaml"
        env.write_text(json.dumps(config, indent=1))  # JSON is YAML: labgrid reads it as its env file
        script = Path(self._tmp.name) / "peer.py"
        script.write_text(SERVER)
        self.log = Path(self._tmp.name) / "labgrid.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([str(labgrid_python()), str(script), str(env), kind], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, cwd=self._tmp.name)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            err = self.log.read_text(errors="replace")
            self.close()
            raise RuntimeError(f"labgrid did not reach a shell: {(err.strip().splitlines() or [first])[-1]}")

    @classmethod
    def qemu_driver(cls, spec: GuestSpec, accel: str) -> LabgridPeer:
        if not (spec.kernel and spec.initrd):
            raise ValueError("the labgrid QEMUDriver peer needs a kernel + initramfs guest")
        qemu = find_qemu()
        extra = ["-nodefaults", "-no-user-config", "-smp", str(spec.cpus), "-initrd", spec.initrd]
        if spec.pvpanic:
            extra += ["-device", "pvpanic"]
        qemu_driver = {
            "qemu_bin": "qemu", "machine": f"{spec.machine},accel={accel}", "cpu": "qemu64",
            "memory": f"{spec.memory_mb}M", "kernel": "kernel", "boot_args": spec.append or "",
            "extra_args": shlex.join(extra), "display": "none",
        }
        config = {"targets": {"main": {"drivers": {"QEMUDriver": qemu_driver, "ShellDriver": _shell_driver(spec)}}},
                  "tools": {"qemu": qemu}, "images": {"kernel": spec.kernel}}
        return cls(config, "qemu")

    @classmethod
    def rfc2217(cls, port: int, spec: GuestSpec) -> LabgridPeer:
        config = {"targets": {"main": {
            "resources": {"NetworkSerialPort": {"host": "127.0.0.1", "port": port, "speed": 115200}},
            "drivers": {"SerialDriver": {}, "ShellDriver": _shell_driver(spec)}}}}
        return cls(config, "rfc2217")

    def block(self, count: int) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the labgrid peer exited")
        samples: list[float] = json.loads(line)
        return samples

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()
