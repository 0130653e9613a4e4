"""The labgrid peer in `make bench`: its ShellDriver's `run("true")` on the same guest type.

labgrid is installed, pinned, in a throw-away venv under `$SERCON_CACHE/bench/` (never in the
project's venv), and reaches the guest the way it reaches a board behind ser2net: through the
guest's RFC 2217 port, as a `NetworkSerialPort`. Its ShellDriver logs in with the same password.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from emulator import Machine, paths
from emulator.spec import GuestSpec

LABGRID_VERSION = "26.0.1"

SCRIPT = """
import json, statistics, sys, time
from labgrid import Environment
target = Environment(sys.argv[1]).get_target("main")
shell = target.get_driver("ShellDriver")
target.activate(shell)
samples = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    out, err, code = shell.run("true")
    assert code == 0, (out, err, code)
    samples.append(time.perf_counter() - start)
print(json.dumps({"median_ms": statistics.median(samples) * 1000, "samples": len(samples)}))
"""


def labgrid_python() -> Path:
    venv = paths.cache() / "bench" / f"labgrid-{LABGRID_VERSION}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"labgrid=={LABGRID_VERSION}"], check=True)
    return python


def bench_labgrid(spec: GuestSpec, samples: int = 100) -> dict[str, Any]:
    python = labgrid_python()
    machine = Machine(spec, name="bench-labgrid", rfc2217=True).start()  # labgrid reaches it over RFC 2217
    try:
        port = machine.info()["rfc2217_port"]
        with tempfile.TemporaryDirectory() as tmp:
            env = Path(tmp) / "env.yaml"
            env.write_text(
                "targets:\n  main:\n    resources:\n      NetworkSerialPort:\n"
                f"        host: 127.0.0.1\n        port: {port}\n        speed: 115200\n"
                "    drivers:\n      SerialDriver: {}\n      ShellDriver:\n"
                "        prompt: '~ # '\n        login_prompt: ' login: '\n"
                f"        username: '{spec.user or 'root'}'\n        password: '{spec.password}'\n"
                "        login_timeout: 120\n"
            )
            script = Path(tmp) / "lg.py"
            script.write_text(SCRIPT)
            out = subprocess.run([str(python), str(script), str(env), str(samples)], capture_output=True,
                                 text=True, timeout=600, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["version"] = LABGRID_VERSION
        return result
    finally:
        machine.stop()
