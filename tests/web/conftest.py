"""Fixtures for the network front-end tests: one real `sercon serve examples/fleet.toml` for the session.

The fleet (four real QEMU guests) boots once; tests log in over real TLS (the self-signed
certificate the server generated is the only trusted CA), open real websockets and SSH sessions.
Tests that change a guest's state (reset, power cycle) wait for it to come back to `login:`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .client import Served

ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "examples" / "fleet.toml"
PASSWORDS = {"alice": "alice-owner-demo", "bob": "bob-contrib-demo", "carol": "carol-reader-demo"}


def start_serve(home: Path, fleet: Path = FLEET,
                extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = dict(os.environ, SERCON_HOME=str(home), PYTHONPATH=str(ROOT))
    env.setdefault("SERCON_ACCEL", "tcg")
    out = home / "serve.out"
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "emulator.gateway.serve", str(fleet), "--port", "0", "--ssh-port", "0",
         *(extra or [])],
        stdout=subprocess.PIPE, stderr=out.open("wb"), env=env, cwd=str(ROOT),
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str] = queue.Queue()

    def reader() -> None:  # keeps draining stdout for the server's whole life
        for raw in stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + 300
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if not line:
            break
        seen.append(line)
        if line.startswith("SERVING "):
            return proc, json.loads(line[8:])
    proc.kill()
    raise RuntimeError("sercon serve did not start:\n" + "".join(seen) + out.read_text(errors="replace"))


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve")
    proc, info = start_serve(home)
    served = Served(home=home, info=info, passwords=PASSWORDS)
    for vm in info["vms"]:
        served.wait_log(vm, b"login: ", timeout=240)
    yield served
    stop_serve(proc)
