"""Rescue drills: break a booted guest the way cloud troubleshooting docs describe, then repair it
over the serial console alone, and end with a normal login on the next boot.

Run them against an image with `pytest --pyargs harness.rescue_drills --sercon-image IMAGE`, or
call them from Python on a guest whose console you hold:

    guest = GrubGuest(machine, console=console, shell=shell)   # a logged-in shell on ttyS0
    result = rescue_drills.fstab_emergency(guest)
    print(result.recovered_by, result.steps)

Every drill starts from a logged-in shell and leaves one (on a new boot, or the same one for the
runaway-guest drill). A drill that cannot apply to the image (no GRUB menu to catch, no systemd)
raises DrillSkipped with the reason; a drill whose repair does not work raises DrillFailed or a
console timeout, never returns quietly. The guest needs no network: every step is typed on COM1.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field

from emulator.errors import SerconError

from ..console import ConsoleTimeout
from ..grub import KERNEL_BANNER, GrubGuest
from ..linux import LinuxShell

#: A getty's login prompt in the console byte stream (harness.linux.LOGIN_PROMPT reads a screen line).
LOGIN_ON_CONSOLE = re.compile(rb"(?i)\blog ?in: ")

PANIC = re.compile(rb"Kernel panic - not syncing")
EMERGENCY = re.compile(rb"You are in emergency mode")
BASH_INIT = re.compile(rb"no job control in this shell")
GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
MISSING_DISK_LABEL = "sercon-drill-missing-disk"
BROKEN_INITRD = "/boot/initrd.img-sercon-drill-broken"
BROKEN_TITLE = "Debian GNU/Linux, new kernel (sercon drill: broken initramfs)"

#: Copies the first menu entry of a grub.cfg in front of it, with its own title and another initrd:
#: what installing a new kernel does (the newest kernel becomes the first, default, entry).
DUPLICATE_FIRST_ENTRY_AWK = r"""
!done && /^menuentry / { grab = 1 }
grab {
    block = block $0 "\n"
    if ($0 ~ /^}/) {
        grab = 0; done = 1; bad = block
        sub(/^menuentry '[^']*'/, "menuentry '" title "'", bad)
        gsub(/initrd[ \t]+[^ \t\n]+/, "initrd " initrd, bad)
        printf "%s%s", bad, block
    }
    next
}
{ print }
"""


class DrillSkipped(SerconError):
    """The drill does not apply to this image (the reason says why)."""


class DrillFailed(SerconError):
    """The break or the repair did not do what the runbook says it does."""


@dataclass
class DrillResult:
    name: str
    #: How the guest came back: "emergency shell", "init=/bin/bash", "previous GRUB entry", "sysrq f", ...
    recovered_by: str = ""
    steps: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        self.steps.append(f"{time.strftime('%H:%M:%S')} {text}")


def _shell(guest: GrubGuest) -> LinuxShell:
    if guest.shell is None:
        raise DrillFailed("a drill starts from a logged-in shell on the serial console (guest.login() first)")
    return guest.shell


def _needs_grub(guest: GrubGuest) -> str:
    """The kernel command line, if GRUB booted this kernel; DrillSkipped otherwise."""
    cmdline = _shell(guest).run("cat /proc/cmdline").output.strip()
    if "BOOT_IMAGE=" not in cmdline:
        raise DrillSkipped("this guest's kernel was not started by GRUB (no BOOT_IMAGE= on its command line, "
                           "e.g. an initramfs or -kernel image): there is no boot menu to catch on the console")
    return cmdline


def _needs_systemd(guest: GrubGuest) -> None:
    if _shell(guest).run("cat /proc/1/comm").output.strip() != "systemd":
        raise DrillSkipped("PID 1 is not systemd: there is no emergency mode to land in")


def _reboot(guest: GrubGuest) -> None:
    """`systemctl reboot` at the logged-in shell (whose prompt will not come back)."""
    guest.shell = None
    guest.console.sendline("systemctl reboot")


# ------------------------------------------------------------------ 1. fstab


def fstab_emergency(guest: GrubGuest, device_timeout: int = 10) -> DrillResult:
    """An fstab line for a disk that does not exist, without `nofail`: the next boot stops in emergency mode.

    Repair: give the root password, remove the line, reboot; then log in normally. The line asks
    systemd to wait `device_timeout` seconds for the disk instead of its default 90, so the drill
    is quicker; the failure and the repair are the same.
    """
    result = DrillResult("fstab")
    _needs_systemd(guest)
    shell = _shell(guest)
    line = (f"LABEL={MISSING_DISK_LABEL} /mnt/sercon-drill ext4 defaults,x-systemd.device-timeout={device_timeout}s"
            " 0 2")
    shell.run(f"mkdir -p /mnt/sercon-drill && echo '{line}' >> /etc/fstab && sync", check=True)
    result.step(f"added to /etc/fstab: {line}")
    _reboot(guest)
    guest.console.expect(EMERGENCY, timeout=guest.boot_timeout)
    result.step("the boot stopped in emergency mode")
    guest.sulogin()
    fixed = guest.shell_command(
        f"$(mount -o remount,rw / && sed -i '/{MISSING_DISK_LABEL}/d' /etc/fstab && sync && echo fixed)", "FSTAB")
    if fixed != "fixed":
        raise DrillFailed(f"could not fix /etc/fstab from the emergency shell: {fixed!r}")
    result.step("emergency shell: removed the line from /etc/fstab")
    guest.console.sendline("systemctl reboot")
    shell = guest.login()
    state = shell.run("systemctl is-system-running --wait").output.strip()
    if state not in ("running", "degraded") or MISSING_DISK_LABEL in shell.run("cat /etc/fstab").output:
        raise DrillFailed(f"after the repair the guest is {state!r}; /etc/fstab:\n{shell.run('cat /etc/fstab').output}")
    result.step(f"normal login on the next boot (system {state})")
    result.recovered_by = "emergency shell"
    return result


# ------------------------------------------------------- 2. lost root password


def lost_root_password(guest: GrubGuest, new_password: str | None = None) -> DrillResult:
    """Nobody knows root's password any more. Catch GRUB after a reset, boot with init=/bin/bash,
    remount / read-write, set a new password, sync, reboot, and log in with it."""
    result = DrillResult("lost root password")
    _needs_grub(guest)
    shell = _shell(guest)
    if guest.user != "root":
        raise DrillSkipped(f"the image logs in as {guest.user!r}, not root: this drill resets root's password")
    forgotten = secrets.token_urlsafe(12)
    shell.run(f"echo 'root:{forgotten}' | chpasswd && sync", check=True)
    result.step("root's password changed to one nobody knows")
    new_password = new_password or "drill-" + secrets.token_hex(4)
    guest.reset_to_menu()
    guest.grub.edit_kernel_line(" init=/bin/bash")
    guest.console.expect(BASH_INIT, timeout=guest.boot_timeout)
    result.step("GRUB: booted with init=/bin/bash")
    # /proc first: nothing mounts it before init=/bin/bash, and mount and the reboot below read it.
    changed = guest.shell_command(
        f"$(mount -t proc proc /proc 2>/dev/null; mount -o remount,rw / && echo 'root:{new_password}' | chpasswd "
        "&& sync && echo changed)", "PASSWD")
    if changed != "changed":
        raise DrillFailed(f"could not set the new password from init=/bin/bash: {changed!r}")
    result.step("init=/bin/bash: remounted / read-write, set a new password, synced")
    # No service manager to ask for a reboot: remount read-only, then reboot through the kernel.
    guest.console.sendline("mount -o remount,ro /; echo b > /proc/sysrq-trigger")
    guest.password = new_password
    guest.login()
    result.step("normal login on the next boot with the new password")
    result.recovered_by = "init=/bin/bash"
    return result


# --------------------------------------------------- 3. broken default kernel


def broken_default_kernel(guest: GrubGuest) -> DrillResult:
    """A new default GRUB entry whose initramfs is broken: the boot panics. Reset, pick the
    previous entry over serial, boot it, make it the default, and check the next boot needs no help."""
    result = DrillResult("broken default kernel")
    _needs_grub(guest)
    shell = _shell(guest)
    cfg = shell.run(f"for f in {' '.join(GRUB_CFGS)}; do grep -qs '^menuentry ' $f && echo $f && break; done")
    grub_cfg = cfg.output.strip()
    if not grub_cfg:
        raise DrillSkipped(f"no GRUB menu found in {' or '.join(GRUB_CFGS)} (menu entries at the start of a line)")
    program = base64.b64encode(DUPLICATE_FIRST_ENTRY_AWK.encode()).decode()
    shell.run(f"cp {grub_cfg} {grub_cfg}.sercon-drill && printf 'not an initramfs\\n' > {BROKEN_INITRD} && "
              f"echo {program} | base64 -d > /tmp/drill.awk && "
              f"awk -v title='{BROKEN_TITLE}' -v initrd={BROKEN_INITRD} -f /tmp/drill.awk {grub_cfg}.sercon-drill "
              f"> {grub_cfg} && sync", check=True)
    first = shell.run(f"grep -m1 '^menuentry ' {grub_cfg}").output
    if BROKEN_TITLE not in first:
        raise DrillFailed(f"the broken entry did not become the first one in {grub_cfg}: {first!r}")
    result.step(f"{grub_cfg}: new first (default) entry with a broken initramfs")
    _reboot(guest)
    guest.grub.wait_for_menu(timeout=guest.boot_timeout)
    guest.console.expect(PANIC, timeout=guest.boot_timeout)
    result.step("the default entry panicked")
    guest.reset_to_menu()
    guest.grub.select_entry(1)
    guest.console.expect(KERNEL_BANNER, timeout=guest.boot_timeout)
    shell = guest.login()
    result.step("GRUB: booted the previous entry")
    shell.run(f"sed -i 's/^\\([[:space:]]*set default=\\).*/\\1\"1\"/' {grub_cfg} && "
              "{ [ ! -f /etc/default/grub ] || sed -i 's/^GRUB_DEFAULT=.*/GRUB_DEFAULT=1/' /etc/default/grub; } "
              "&& sync", check=True)
    result.step("made it the default (set default=\"1\")")
    _reboot(guest)
    guest.grub.wait_for_menu(timeout=guest.boot_timeout)  # and let the countdown run out
    index = guest.console.expect([PANIC, re.compile(rb"login: ")], timeout=guest.boot_timeout)
    if index == 0:
        raise DrillFailed("the next boot, left alone, started the broken entry again")
    guest.console.sendline()  # the prompt was read above: ask the getty for a fresh one
    guest.login()
    result.step("the next boot, untouched, logged in normally")
    result.recovered_by = "previous GRUB entry"
    return result


# ------------------------------------------------------------- 4. runaway guest


def runaway_memory_hog(guest: GrubGuest, megabytes: int = 100, wait: float = 5.0) -> DrillResult:
    """A memory hog in the foreground hangs the shell. SysRq f (the OOM killer) kills it and the
    same shell comes back, no reboot; failing that SysRq e then i; failing that REISUB and a login."""
    result = DrillResult("runaway guest")
    shell = _shell(guest)
    if shell.run("cat /proc/sys/kernel/sysrq").output.strip() != "1":
        shell.run("echo 1 > /proc/sys/kernel/sysrq", check=True)
        result.step("enabled every SysRq function (kernel.sysrq=1)")
    boot_id = shell.run("cat /proc/sys/kernel/random/boot_id").output.strip()
    # One process that holds the memory and then blocks (rather than growing until the kernel's own
    # OOM killer acts), so the shell stays hung until someone does something. It ignores SIGINT,
    # which the BREAK before each SysRq key can deliver to the foreground job, and it has no
    # child (a `sleep` would outlive it and keep the job's process group).
    shell.run("rm -f /run/sercon-drill-hog && mkfifo /run/sercon-drill-hog", check=True)
    guest.console.sendline(f"sh -c 'trap \"\" INT; x=$(head -c {megabytes * 1000000} /dev/zero | tr \"\\0\" x); "
                           "echo HOG-$((6*7)); read y < /run/sercon-drill-hog'")
    guest.console.expect(re.compile(rb"HOG-42"), timeout=300)
    try:
        guest.console.expect(shell.prompt, timeout=wait)
        raise DrillFailed("the memory hog did not hang the shell")
    except ConsoleTimeout:
        pass
    result.step(f"a {megabytes} MB memory hog holds the shell")
    for keys, label in (("f", "sysrq f"), ("e", "sysrq e"), ("i", "sysrq i")):
        guest.machine.sysrq(keys)
        try:
            guest.console.expect([shell.prompt, LOGIN_ON_CONSOLE], timeout=30)
        except ConsoleTimeout:
            result.step(f"{label}: the shell is still hung")
            continue
        # systemd may act on the kill too: a service whose process the OOM killer killed is stopped
        # (OOMPolicy=stop, the default), and without logind the login shell is the getty's.
        guest.console.drain(quiet=3, limit=30)
        guest.console.sendline()
        if guest.console.expect([shell.prompt, LOGIN_ON_CONSOLE], timeout=30) == 1:
            result.step(f"{label}: the hog is gone; systemd stopped the console's getty with it (OOMPolicy=stop) "
                        "and started a new one: log in again")
            guest.console.sendline()  # the prompt was read above: ask the getty for a fresh one
            shell = guest.login()
        else:
            result.step(f"{label}: the same shell is back")
        if shell.run("cat /proc/sys/kernel/random/boot_id").output.strip() != boot_id:
            raise DrillFailed(f"after {label} the guest had rebooted")
        result.step(f"{label}: a usable shell, same boot")
        result.recovered_by = label
        return result
    guest.shell = None
    guest.machine.sysrq("reisub", interval=1.0)
    guest.login()
    result.step("REISUB: rebooted and logged in")
    result.recovered_by = "sysrq reisub"
    return result


# ------------------------------------------------- 5. panic and automatic reboot


def panic_auto_reboot(guest: GrubGuest, panic_seconds: int = 10) -> DrillResult:
    """With kernel.panic=N, an NMI (kernel.unknown_nmi_panic=1), or SysRq c where NMIs do not panic,
    panics the guest and it comes back by itself. The panic and the reboot are in events.jsonl and the log."""
    result = DrillResult("panic and automatic reboot")
    shell = _shell(guest)
    # What `sysctl -w` does (minimal images have no procps).
    shell.run(f"echo {panic_seconds} > /proc/sys/kernel/panic && echo 1 > /proc/sys/kernel/unknown_nmi_panic && "
              "echo 1 > /proc/sys/kernel/sysrq", check=True)
    result.step(f"kernel.panic={panic_seconds}, kernel.unknown_nmi_panic=1")
    since = time.time()
    start = guest.machine.serial_log_path.stat().st_size
    guest.shell = None
    guest.machine.nmi()
    how = "NMI"
    try:
        guest.console.expect(PANIC, timeout=60)
    except ConsoleTimeout:
        guest.machine.sysrq("c")
        how = "SysRq c"
        guest.console.expect(PANIC, timeout=60)
    result.step(f"{how}: kernel panic")
    guest.console.expect(KERNEL_BANNER, timeout=guest.boot_timeout)  # the guest's own reboot, panic_seconds later
    result.step("a new boot started by itself")
    guest.login()  # nobody touched the console: it came back by itself
    events = [e for e in guest.machine.events() if e["time"] >= since]
    kinds = [e["event"] for e in events]
    if "panic" not in kinds or "boot" not in kinds[kinds.index("panic"):]:
        raise DrillFailed(f"events.jsonl does not show a panic followed by a boot: {kinds}")
    log = guest.machine.read_log(start)
    if not PANIC.search(log) or not KERNEL_BANNER.search(log[PANIC.search(log).end():]):  # type: ignore[union-attr]
        raise DrillFailed("the serial log does not show the panic followed by a new boot")
    result.step("events.jsonl and the serial log show the panic and the reboot")
    result.recovered_by = f"kernel.panic={panic_seconds}"
    return result


DRILLS = {
    "fstab": fstab_emergency,
    "lost_root_password": lost_root_password,
    "broken_default_kernel": broken_default_kernel,
    "runaway_memory_hog": runaway_memory_hog,
    "panic_auto_reboot": panic_auto_reboot,
}
