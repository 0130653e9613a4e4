"""Serial-console readiness of a Linux image: boot it, look, log in, probe; report pass/fail/warning with fixes.

What cloud providers require of an image so that their serial console is useful (shared/reference
section 5), checked on the real booted guest rather than by reading files alone:

==================  ==========================================================================
console             `console=ttyS0` on the kernel command line, and the last `console=`
quiet               no `quiet`/`rhgb`/`splash` on the command line, no Plymouth on the console
getty               a login prompt appears on ttyS0 (serial-getty@ttyS0, inittab, ...)
password-user       a user can log in with a password (the check logs in with --user/--password)
grub-serial         GRUB's menu shows on the serial port, with a countdown (disk images)
sysrq-mask          `kernel.sysrq` allows the keys a console user needs (1, or 128|32|16|...)
sysrq-serial        BREAK + key on COM1 reaches the kernel (CONFIG_MAGIC_SYSRQ_SERIAL etc.)
nmi-panic           `kernel.unknown_nmi_panic=1` (or panic_on_unrecovered_nmi): an NMI panics
panic-reboot        `kernel.panic` > 0: a panicked guest reboots by itself
tmout               `TMOUT` set for console shells (Azure suggests 600)
rescue              rescue/emergency targets reachable: root has a password (or sulogin forced)
==================  ==========================================================================

`run_checks(machine, user, password)` does the work on a started `Machine`; `check_main(argv)` is
`sercon check` (a table, or `--json`; exit status 1 when any check fails, 2 when the image could
not be checked at all). `harness/readiness_suite.py` runs the same checks as a pytest module.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from emulator import GuestSpec, Machine, resolve_image
from emulator.errors import SerconError

from .console import Console, ConsoleClosed, ConsoleTimeout
from .linux import LOGIN_PROMPT, LinuxShell, LoginFailed

Status = Literal["pass", "fail", "warn", "skip"]

CHECKS: dict[str, str] = {
    "console": "console=ttyS0 is the last console= on the kernel command line",
    "quiet": "no quiet/rhgb/splash or Plymouth on the serial console",
    "getty": "a login prompt (getty) on ttyS0",
    "password-user": "a user that logs in with a password",
    "grub-serial": "GRUB menu on the serial port, with a timeout",
    "grub-efi": "GRUB EFI sets up the serial terminal (grub.cfg on the ESP)",
    "sysrq-mask": "kernel.sysrq allows the console's SysRq keys",
    "sysrq-serial": "SysRq over the serial line reaches the kernel",
    "nmi-panic": "an NMI panics the kernel (kernel.unknown_nmi_panic=1)",
    "panic-reboot": "a panic reboots the guest (kernel.panic > 0)",
    "tmout": "TMOUT logs idle console shells out",
    "rescue": "rescue/emergency target reachable with a root password",
}

GRUB_FIX = ('in /etc/default/grub set GRUB_TERMINAL="serial console", GRUB_SERIAL_COMMAND="serial --speed=115200", '
            "GRUB_TIMEOUT=5 and GRUB_TIMEOUT_STYLE=menu, then run update-grub (grub2-mkconfig -o /boot/grub2/grub.cfg "
            "on Red Hat family)")
CMDLINE_FIX = ('put console=tty0 console=ttyS0,115200n8 at the end of GRUB_CMDLINE_LINUX in /etc/default/grub '
               "(ttyS0 last) and run update-grub")

BOOT_DONE = re.compile(rb"Reached target[^\n]*(?:Multi-User System|Graphical Interface)")
KERNEL_CMDLINE = re.compile(rb"Command line: ([^\r\n]*)")
GRUB_MENU = re.compile(rb"GNU GRUB")
GRUB_COUNTDOWN = re.compile(rb"will be executed automatically in|will boot automatically in")
KERNEL_START = re.compile(rb"Linux version \d")
SYSRQ_PROBE_KEY = "w"  # "Show Blocked State": harmless, short, needs the dump bit (8) of kernel.sysrq
SYSRQ_DONE = re.compile(rb"sysrq: Show Blocked State")
SYSRQ_DISABLED = re.compile(rb"This sysrq operation is disabled")


@dataclass
class Check:
    id: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def title(self) -> str:
        return CHECKS[self.id]


@dataclass
class Report:
    image: str
    checks: list[Check] = field(default_factory=list)
    boot_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def get(self, check_id: str) -> Check:
        return next(c for c in self.checks if c.id == check_id)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "ok": self.ok, "boot_seconds": self.boot_seconds,
                "checks": [{**asdict(c), "title": c.title} for c in self.checks]}

    def table(self) -> str:
        marks = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "skip"}
        width = max(len(c) for c in CHECKS)
        lines = [f"Serial console readiness of {self.image}", ""]
        for c in self.checks:
            lines.append(f"  {marks[c.status]:<4}  {c.id:<{width}}  {c.detail}")
            if c.fix and c.status in ("fail", "warn"):
                lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("pass", "fail", "warn", "skip")}
        lines += ["", f"{counts['pass']} passed, {counts['fail']} failed, {counts['warn']} warnings, "
                      f"{counts['skip']} skipped" + ("" if self.ok else "  -> NOT READY")]
        return "\n".join(lines)


# ------------------------------------------------------------------ probing


def _wait_for_login(console: Console, boot_timeout: float, after_boot: float) -> bool:
    """True once `login:` shows; False if the boot finished (or the time ran out) without one."""
    deadline = time.monotonic() + boot_timeout
    patterns = [LOGIN_PROMPT, BOOT_DONE]
    while time.monotonic() < deadline:
        try:
            index = console.expect(patterns, timeout=max(1.0, deadline - time.monotonic()))
        except ConsoleTimeout:
            break
        if index == 0:
            return True
        # systemd says the boot is done: a getty, if any, prints its prompt within seconds.
        deadline = min(deadline, time.monotonic() + after_boot)
        patterns = [LOGIN_PROMPT]
    # Maybe the prompt went by before we looked, or needs Enter (some gettys wait for a key).
    console.sendline()
    try:
        console.expect(LOGIN_PROMPT, timeout=10)
        return True
    except ConsoleTimeout:
        return False


def _sysrq_probe(machine: Machine, console: Console) -> str:
    """Send BREAK + `w` on COM1; "done", "disabled" or "silent" by what the kernel printed."""
    machine.sysrq(SYSRQ_PROBE_KEY)
    try:
        index = console.expect([SYSRQ_DONE, SYSRQ_DISABLED], timeout=15)
    except ConsoleTimeout:
        return "silent"
    return "done" if index == 0 else "disabled"


def _int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def run_checks(machine: Machine, user: str, password: str | None, *, boot_timeout: float = 240.0,
               image: str | None = None) -> Report:
    """Check a started guest from its first boot byte on; the guest is left running (caller stops it)."""
    report = Report(image=image or (machine.spec.image if machine.spec and machine.spec.image else str(machine.name)))
    started = time.monotonic()
    console = Console.for_machine(machine, from_offset=0)
    try:
        return _run_checks(report, machine, console, user, password, boot_timeout, started)
    finally:
        console.close()


def _run_checks(report: Report, machine: Machine, console: Console, user: str, password: str | None,
                boot_timeout: float, started: float) -> Report:
    add = report.checks.append
    got_login = _wait_for_login(console, boot_timeout, after_boot=20.0)
    if got_login:
        report.boot_seconds = round(time.monotonic() - started, 1)
    boot_log = machine.read_log(0)
    first_kernel = KERNEL_START.search(boot_log)
    before_kernel = boot_log[: first_kernel.start()] if first_kernel else boot_log

    # ---- GRUB: judged from what came over the serial line before the kernel started.
    direct_kernel = bool(machine.spec and machine.spec.kernel)
    if direct_kernel:
        add(Check("grub-serial", "skip", "booted with -kernel: no boot loader in this image"))
    elif GRUB_MENU.search(before_kernel) and GRUB_COUNTDOWN.search(before_kernel):
        add(Check("grub-serial", "pass", "GRUB menu and countdown seen on ttyS0"))
    elif GRUB_MENU.search(before_kernel):
        add(Check("grub-serial", "warn", "GRUB shows on ttyS0 but without a countdown (GRUB_TIMEOUT=0 or hidden)",
                  GRUB_FIX))
    else:
        add(Check("grub-serial", "fail", "no GRUB menu on ttyS0 before the kernel started: a serial console user "
                  "cannot pick an entry or edit the kernel line", GRUB_FIX))

    # ---- Command line: from the kernel's own "Command line:" message (no login needed).
    match = KERNEL_CMDLINE.search(boot_log)
    cmdline = match.group(1).decode(errors="replace") if match else ""
    shell: LinuxShell | None = None
    login_error = ""
    if got_login:
        shell = LinuxShell(console)
        console.sendline()  # a fresh prompt for login() to find (the first one was consumed above)
        try:
            shell.login(user, password, timeout=30)
        except (LoginFailed, ConsoleTimeout) as exc:
            login_error = str(exc).splitlines()[0]
            shell = None
    if shell is not None:
        cmdline = shell.run("cat /proc/cmdline").output.strip() or cmdline
    _cmdline_checks(report, cmdline, match is not None or shell is not None)

    if not got_login:
        add(Check("getty", "fail", "no login prompt on ttyS0 (the boot finished, or nothing came within "
                  f"{boot_timeout:.0f}s)", "systemctl unmask serial-getty@ttyS0.service; systemctl enable "
                  "serial-getty@ttyS0.service (or an inittab line `T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100`)"))
        add(Check("password-user", "skip", "no login prompt, so no login was tried", ""))
    else:
        add(Check("getty", "pass", "login prompt on ttyS0"))
        if shell is None:
            add(Check("password-user", "fail", f"logging in as {user!r} with the given password failed: {login_error}",
                      f"set a password: `passwd {user}` (cloud consoles need a password login, not only SSH keys); "
                      "or give the right --user/--password"))
        else:
            add(Check("password-user", "pass", f"logged in as {user!r} with a password"))

    # ---- Live SysRq over the serial line (needs no shell, but a quiet console reads better).
    probe = _sysrq_probe(machine, console)

    if shell is None:
        for check_id in ("sysrq-mask", "nmi-panic", "panic-reboot", "tmout", "rescue", "grub-efi"):
            add(Check(check_id, "skip", "needs a shell on the console (see getty/password-user)"))
        add(_sysrq_serial_check(probe, None))
        report.checks.sort(key=lambda c: list(CHECKS).index(c.id))
        return report

    shell.run("true")  # resynchronise after the SysRq output
    values = shell.run("for f in sysrq unknown_nmi_panic panic_on_unrecovered_nmi panic; do "
                       "cat /proc/sys/kernel/$f 2>/dev/null || echo -; done").output.split()
    sysrq, nmi, unrecovered, panic = ([*values, "-", "-", "-", "-"])[:4]
    add(_sysrq_mask_check(_int(sysrq), probe))
    config = shell.run("c=/boot/config-$(uname -r); if [ -r $c ]; then cat $c; else zcat /proc/config.gz "
                       "2>/dev/null; fi | grep -E '^CONFIG_(SERIAL_8250_CONSOLE|MAGIC_SYSRQ|MAGIC_SYSRQ_SERIAL)='"
                       ).output
    add(_sysrq_serial_check(probe, config))

    if _int(nmi) == 1 or _int(unrecovered) == 1:
        add(Check("nmi-panic", "pass", f"kernel.unknown_nmi_panic={nmi}, panic_on_unrecovered_nmi={unrecovered}"))
    else:
        add(Check("nmi-panic", "fail", f"kernel.unknown_nmi_panic={nmi}: a console NMI only prints 'Dazed and "
                  "confused' instead of crashing a hung guest", "echo 'kernel.unknown_nmi_panic = 1' > "
                  "/etc/sysctl.d/90-nmi.conf (and optionally set up kdump)"))
    panic_value = _int(panic)
    if panic_value is not None and panic_value != 0:
        add(Check("panic-reboot", "pass", f"kernel.panic={panic_value}: a panicked guest reboots by itself"))
    else:
        add(Check("panic-reboot", "fail", f"kernel.panic={panic}: a panicked guest hangs until someone resets it",
                  "echo 'kernel.panic = 10' > /etc/sysctl.d/90-panic.conf"))

    tmout = shell.run('echo "${TMOUT:-}"').output.strip()
    if _int(tmout):
        add(Check("tmout", "pass", f"TMOUT={tmout} in the login shell"))
    else:
        add(Check("tmout", "warn", "TMOUT is not set: an abandoned console session stays logged in",
                  "printf 'TMOUT=600\\nexport TMOUT\\n' > /etc/profile.d/tmout.sh"))

    add(_rescue_check(shell))
    add(grub_efi_check(shell))
    report.checks.sort(key=lambda c: list(CHECKS).index(c.id))
    return report


def _cmdline_checks(report: Report, cmdline: str, known: bool) -> None:
    add = report.checks.append
    if not known:
        add(Check("console", "fail", "no kernel output on ttyS0 at all (not even the kernel's command line)",
                  CMDLINE_FIX))
        add(Check("quiet", "skip", "kernel command line unknown"))
        return
    words = cmdline.split()
    consoles = [w.split("=", 1)[1] for w in words if w.startswith("console=")]
    if consoles and consoles[-1].startswith("ttyS0"):
        add(Check("console", "pass", f"console={consoles[-1]} is the last console ({' '.join(consoles)})"))
    elif any(c.startswith("ttyS0") for c in consoles):
        add(Check("console", "fail", f"console=ttyS0 is not the last console= ({', '.join(consoles)}): /dev/console "
                  "and rescue shells go to " + consoles[-1], CMDLINE_FIX))
    else:
        add(Check("console", "fail", "no console=ttyS0 on the kernel command line: kernel messages and rescue "
                  "shells do not reach the serial console", CMDLINE_FIX))
    noisy = [w for w in words if w in ("quiet", "rhgb", "splash") or w.startswith("splash=")]
    if noisy:
        add(Check("quiet", "fail", f"{' '.join(noisy)} on the kernel command line: boot messages (and systemd's "
                  "status lines) are hidden from the serial console",
                  "remove quiet/rhgb/splash from GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub (or add "
                  "plymouth.enable=0) and run update-grub"))
    else:
        add(Check("quiet", "pass", "no quiet/rhgb/splash on the kernel command line"))


def _sysrq_mask_check(mask: int | None, probe: str) -> Check:
    seen = {"done": "a serial SysRq 'w' ran", "disabled": "a serial SysRq 'w' was refused "
            "('This sysrq operation is disabled')", "silent": "a serial SysRq 'w' printed nothing"}[probe]
    fix = "echo 'kernel.sysrq = 1' > /etc/sysctl.d/90-sysrq.conf (1 = every key; 176 = sync, remount, reboot)"
    if mask is None:
        return Check("sysrq-mask", "warn", f"kernel.sysrq unreadable; {seen}", fix)
    if mask == 1:
        return Check("sysrq-mask", "pass", f"kernel.sysrq=1 (every key); {seen}")
    if mask == 0:
        return Check("sysrq-mask", "fail", f"kernel.sysrq=0: SysRq is off; {seen}", fix)
    needed = {128: "reboot/poweroff (b, o)", 32: "remount read-only (u)", 16: "sync (s)"}
    missing = [what for bit, what in needed.items() if not mask & bit]
    if mask == 16:
        return Check("sysrq-mask", "fail", f"kernel.sysrq=16, systemd's default: only sync is allowed; {seen}", fix)
    if missing:
        return Check("sysrq-mask", "fail", f"kernel.sysrq={mask} does not allow {', '.join(missing)}; {seen}", fix)
    return Check("sysrq-mask", "pass" if probe == "done" else "warn",
                 f"kernel.sysrq={mask} allows sync, remount and reboot; {seen}", fix)


def _sysrq_serial_check(probe: str, config: str | None) -> Check:
    fix = ("use a kernel built with CONFIG_SERIAL_8250_CONSOLE=y, CONFIG_MAGIC_SYSRQ=y and "
           "CONFIG_MAGIC_SYSRQ_SERIAL=y, with console=ttyS0 and kernel.sysrq != 0")
    if probe in ("done", "disabled"):
        return Check("sysrq-serial", "pass", "BREAK + key on COM1 reached the kernel's SysRq handler")
    if config is None:
        return Check("sysrq-serial", "fail", "BREAK + key on COM1 got no answer from the kernel", fix)
    missing = [opt for opt in ("CONFIG_SERIAL_8250_CONSOLE", "CONFIG_MAGIC_SYSRQ", "CONFIG_MAGIC_SYSRQ_SERIAL")
               if f"{opt}=y" not in config]
    if missing and config.strip():
        return Check("sysrq-serial", "fail", f"BREAK + key got no answer; the kernel lacks {', '.join(missing)}", fix)
    return Check("sysrq-serial", "fail", "BREAK + key on COM1 got no answer (kernel.sysrq=0, or the serial "
                 "console is not ttyS0)", fix)


def _rescue_check(shell: LinuxShell) -> Check:
    has_target = shell.run("test -e /lib/systemd/system/rescue.target -o -e /usr/lib/systemd/system/rescue.target")
    field2 = shell.run("(cat /etc/shadow 2>/dev/null || sudo -n cat /etc/shadow 2>/dev/null) | "
                       "awk -F: '$1==\"root\"{print \"root:\" $2}'").output.strip()
    forced = shell.run("systemctl cat rescue.service emergency.service 2>/dev/null | grep -c SYSTEMD_SULOGIN_FORCE"
                       ).output.strip()
    fix = ("set a root password (`passwd root`): sulogin asks for it in rescue and emergency mode; or allow a "
           "passwordless root shell with `systemctl edit rescue.service emergency.service` adding "
           "[Service] Environment=SYSTEMD_SULOGIN_FORCE=1")
    if not has_target.ok:
        return Check("rescue", "warn", "no systemd rescue.target in this image; init=/bin/sh from the boot "
                     "loader is the way in", "")
    if not field2.startswith("root:"):
        return Check("rescue", "skip", "cannot read /etc/shadow (log in as root, or allow sudo -n)")
    hashed = field2[5:]
    if hashed and hashed[0] not in "*!":
        return Check("rescue", "pass", "root has a password: rescue.target and emergency.target give a root shell")
    if _int(forced):
        return Check("rescue", "pass", "root is locked but SYSTEMD_SULOGIN_FORCE=1: rescue gives a root shell")
    return Check("rescue", "fail", "root has no password: sulogin refuses rescue/emergency mode "
                 "('Cannot open access to console, the root account is locked')", fix)


ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GRUB_EFI_FIX = ('in /etc/default/grub set GRUB_TERMINAL="serial console" (or GRUB_TERMINAL_OUTPUT="serial" where the '
                'firmware console is on COM1 too) and GRUB_SERIAL_COMMAND="serial --speed=115200", run update-grub, '
                "and check that the ESP's EFI/<distribution>/grub.cfg loads /boot/grub/grub.cfg (grub-install does)")


def grub_efi_check(shell: LinuxShell) -> Check:
    """On a UEFI guest: GRUB's configuration, from the grub.cfg on the EFI system partition (and the
    /boot/grub/grub.cfg it loads), has a `serial` command and `serial` in terminal_output.

    Seeing GRUB on COM1 is not enough under UEFI: firmware whose console is on COM1 (OVMF here)
    copies GRUB's screen-only output there, while a cloud's firmware may not, and the menu is gone.
    """
    if not shell.run("test -d /sys/firmware/efi").ok:
        return Check("grub-efi", "skip", "not booted through UEFI (no /sys/firmware/efi)")
    esp = shell.run(f"lsblk -nrpo NAME,PARTTYPE | awk 'tolower($2)==\"{ESP_TYPE}\"{{print $1; exit}}'").output.strip()
    if not esp:
        return Check("grub-efi", "warn", "booted through UEFI, but no EFI system partition is visible", GRUB_EFI_FIX)
    mounted = shell.run(f"findmnt -nro TARGET --source {esp} | head -1").output.strip()
    mount = mounted or "/run/sercon-esp"
    if not mounted and not shell.run(f"mkdir -p {mount} && mount -o ro {esp} {mount}").ok:
        return Check("grub-efi", "skip", f"cannot mount the EFI system partition {esp} to read its grub.cfg")
    try:
        found = shell.run(f"find {mount}/EFI -maxdepth 2 -iname grub.cfg 2>/dev/null").output.split()
        names = [f"ESP:{path.removeprefix(mount)}" for path in found]
        text = shell.run(f"cat {' '.join(found)} 2>/dev/null").output if found else ""
    finally:
        if not mounted:
            shell.run(f"umount {mount}")
    if not found:
        return Check("grub-efi", "fail", f"no grub.cfg on the EFI system partition {esp}", GRUB_EFI_FIX)
    loaded = re.search(r"^\s*(?:configfile|source)\s+\S*/boot/grub2?/grub\.cfg|^\s*set\s+prefix=\S*/boot/grub2?",
                       text, re.M)
    if loaded:  # the usual stub: the menu itself is in /boot/grub/grub.cfg on the root filesystem
        boot_cfg = shell.run("for f in /boot/grub/grub.cfg /boot/grub2/grub.cfg; do [ -r $f ] && echo $f && "
                             "break; done").output.strip()
        if boot_cfg:
            names.append(boot_cfg)
            text += shell.run(f"cat {boot_cfg}").output
    where = " -> ".join(names)
    has_serial = re.search(r"^\s*serial\b", text, re.M)
    output = re.search(r"^\s*terminal_output\b[^\n]*\bserial\b", text, re.M)
    if has_serial and output:
        return Check("grub-efi", "pass", f"GRUB EFI's serial terminal is set up in {where}")
    missing = ", ".join(what for what, ok in (("no `serial` command", has_serial),
                                              ("no `serial` in terminal_output", output)) if not ok)
    return Check("grub-efi", "fail", f"GRUB EFI ({where}): {missing}; its menu reaches COM1 only where the "
                 "firmware copies its console there", GRUB_EFI_FIX)


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sercon check",
        description="Boot an image and check that it is ready for a cloud serial console (ttyS0).",
    )
    parser.add_argument("image", nargs="?", help="an image recipe name (see `sercon image ls`) or a disk/kernel file")
    parser.add_argument("--disk", help="a disk image (raw or qcow2) booted by SeaBIOS, or the root disk of --kernel; "
                        "it is never modified")
    parser.add_argument("--kernel", help="a kernel (bzImage or vmlinux) booted directly")
    parser.add_argument("--initrd", help="an initrd for --kernel")
    parser.add_argument("--append", help="kernel command line for --kernel (default: console=ttyS0)")
    parser.add_argument("--user", help="login user (default: the recipe's, or root)")
    parser.add_argument("--password", help="login password (default: the recipe's)")
    parser.add_argument("--memory", type=int, help="guest memory in MiB (default 512, or the recipe's)")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds to wait for the boot to reach a login prompt (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    return parser


def disk_format(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
    except OSError as exc:
        raise SerconError(f"cannot read disk image {path}: {exc}") from exc


def spec_from_args(args: argparse.Namespace) -> tuple[GuestSpec, str]:
    """The guest to check: a recipe or file (IMAGE), a disk (--disk), or a kernel (--kernel, with --initrd,
    --append and optionally --disk for its root filesystem)."""
    if bool(args.image) + bool(args.disk and not args.kernel) + bool(args.kernel) != 1:
        raise SerconError("give exactly one of: IMAGE (recipe name or file), --disk FILE, --kernel FILE "
                          "(--kernel may take a --disk with its root filesystem)")
    if args.initrd and not args.kernel:
        raise SerconError("--initrd goes with --kernel")
    if args.image:
        spec, label = resolve_image(args.image), args.image
    elif args.kernel:
        spec = GuestSpec(kernel=args.kernel, initrd=args.initrd, append=args.append or "console=ttyS0,115200n8",
                         disk=args.disk, disk_format=disk_format(args.disk) if args.disk else None,
                         image=Path(args.kernel).name)
        label = args.kernel
    else:
        spec = GuestSpec(disk=args.disk, disk_format=disk_format(args.disk), image=Path(args.disk).name)
        label = args.disk
    if spec.disk:
        spec = spec.replace(disk_snapshot=True)  # checking never writes to the user's image
    if args.memory:
        spec = spec.replace(memory_mb=args.memory)
    return spec, label


def check_image(spec: GuestSpec, user: str, password: str | None, *, label: str | None = None,
                boot_timeout: float = 240.0) -> Report:
    """Boot `spec` in a guest of its own, run every check, stop the guest."""
    machine = Machine(spec)
    machine.start()
    try:
        return run_checks(machine, user, password, boot_timeout=boot_timeout, image=label)
    finally:
        machine.stop()


def check_main(argv: list[str] | None = None) -> int:
    """`sercon check`: 0 when nothing fails, 1 when a check fails, 2 when the image could not be checked."""
    args = build_parser().parse_args(argv)
    try:
        spec, label = spec_from_args(args)
        user = args.user or spec.user or "root"
        password = args.password if args.password is not None else spec.password
        if password is None:
            raise SerconError("give the guest's login with --user and --password (a password user is itself "
                              "one of the requirements)")
        report = check_image(spec, user, password, label=label, boot_timeout=args.timeout)
    except (SerconError, ConsoleClosed) as exc:
        if args.json:
            print(json.dumps({"image": args.image or args.disk or args.kernel, "ok": False, "error": str(exc)}))
        else:
            print(f"sercon check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(check_main())
