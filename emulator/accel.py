"""Choosing the accelerator: KVM when it really boots guests, TCG otherwise.

`/dev/kvm` existing is not enough: on machines that are themselves VMs with a paravirtual KVM
(PVM), stock guests stall silently or die with "KVM internal error" while QEMU still reports KVM
as enabled. So `auto` boots the guest's own kernel under KVM for a few seconds and watches its
console for the kernel reaching userspace; the verdict is cached per host boot and QEMU version.
`SERCON_ACCEL=tcg|kvm` (or a spec's `accel`) skips the probe.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import time
from pathlib import Path

from . import paths, settings

log = logging.getLogger("sercon.accel")

PROBE_SECONDS = 6.0
#: Seen on the console once the kernel is past early boot; a working KVM gets there in well under 1 s.
PROBE_SUCCESS = (b"Freeing unused kernel", b"Run /init", b"Trying to unpack rootfs")
PROBE_FAILURE = (b"KVM internal error", b"kvm run failed", b"failed to initialize kvm")


def kvm_accessible() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _host_key(qemu: str) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    try:
        qemu_stat = os.stat(qemu)
        qemu_id = f"{qemu}:{qemu_stat.st_size}:{int(qemu_stat.st_mtime)}"
    except OSError:
        qemu_id = qemu
    return f"{boot_id}|{qemu_id}"


def known_choice(requested: str, qemu: str) -> tuple[str, str] | None:
    """The verdict when it needs no probe (asked for, no usable /dev/kvm, or cached): a few small
    reads, cheap enough for an owner's event loop. None: only a probe can tell."""
    forced = settings.choice("SERCON_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced, f"forced by SERCON_ACCEL={forced}"
    if requested in ("tcg", "kvm"):
        return requested, f"requested accel={requested}"
    if not kvm_accessible():
        return "tcg", "/dev/kvm is missing or not accessible"
    try:
        cached = json.loads((paths.cache() / "accel.json").read_text())
        if cached.get("key") == _host_key(qemu):
            return cached["accel"], f"cached probe verdict: {cached['reason']}"
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


def choose_accel(requested: str, qemu: str, kernel: str | None) -> tuple[str, str]:
    """(accelerator, reason) for a guest; `requested` is the spec's accel ("auto", "tcg", "kvm")."""
    known = known_choice(requested, qemu)
    if known is not None:
        return known
    if not kernel:
        return "tcg", "no kernel to probe KVM with (disk images are probed through their kernel only)"
    accel, reason = probe_kvm(qemu, kernel)
    cache_file = paths.cache() / "accel.json"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"key": _host_key(qemu), "accel": accel, "reason": reason}))
    return accel, reason


def probe_kvm(qemu: str, kernel: str, budget: float = PROBE_SECONDS) -> tuple[str, str]:
    """Boot `kernel` under KVM with no root fs and watch it; ("kvm"|"tcg", why)."""
    args = [
        qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc,accel=kvm",
        "-cpu", "host", "-m", "256", "-serial", "stdio", "-monitor", "none",
        "-kernel", kernel, "-append", "console=ttyS0 panic=-1", "-no-reboot",
    ]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        return "tcg", f"KVM probe could not start QEMU: {exc}"
    assert proc.stdout is not None
    seen = b""
    try:
        while time.monotonic() - started < budget:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
                if any(m in seen for m in PROBE_FAILURE):
                    return "tcg", "KVM probe: the guest died with a KVM internal error"
                if any(m in seen for m in PROBE_SUCCESS):
                    elapsed = time.monotonic() - started
                    return "kvm", f"KVM probe: kernel reached early userspace in {elapsed:.1f}s"
        if proc.poll() is not None and proc.returncode != 0:
            return "tcg", f"KVM probe: QEMU exited with {proc.returncode}: {seen[-300:].decode(errors='replace')}"
        return "tcg", f"KVM probe: no boot progress on the console within {budget:.0f}s (KVM stalls here)"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
