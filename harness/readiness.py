"""Serial-console readiness of a Linux image: judge offline first, confirm live; pass/fail/warn with fixes.

Two phases, both feeding one `Facts`:

1. Offline, before booting: the kernel command line given (`--append`, the recipe's, or the first
   entry of the image's grub.cfg) and the image's files, read without mounting
   (`harness.image_files`: initramfs cpio, ext4 through debugfs, any qemu-img disk format, MBR
   or GPT, a separate /boot). `sercon check --offline` stops here.
2. Live: the guest boots once. The boot is over when a prompt shows, or when init has started
   and the console has been quiet for a few seconds (no fixed wait); then the check logs in and
   reads /proc, and sends a SysRq over the line.

Each check is one function registered with `@check(ID, TITLE)`; it gets the `Facts` and returns
one `Check`. Adding a check is adding one such function. The checks:

==================  ==========================================================================
console             `console=ttyS0` on the kernel command line, and the last `console=`
quiet               no `quiet`/`rhgb`/`splash` (or a low `loglevel`) on the command line
getty               a login prompt on ttyS0 (serial-getty@ttyS0, inittab, ...)
password-user       a user can log in with a password (the check logs in with --user/--password)
grub-serial         GRUB's menu shows on the serial port, with a countdown (disk images)
sysrq-mask          `kernel.sysrq` allows the keys a console user needs (1, or 128|32|16|...)
sysrq-serial        BREAK + key on COM1 reaches the kernel (CONFIG_MAGIC_SYSRQ_SERIAL etc.)
nmi-panic           `kernel.unknown_nmi_panic=1` (or panic_on_unrecovered_nmi): an NMI panics
panic-reboot        `kernel.panic` > 0: a panicked guest reboots by itself
tmout               `TMOUT` set for console shells (Azure suggests 600)
rescue              rescue/emergency targets reachable: root has a password (or sulogin forced)
==================  ==========================================================================

`check_image(spec, user, password)` does both phases; `check_main(argv)` is `sercon check` (a
table, or `--json`; exit status 1 when any check fails, 2 when the image could not be checked).
`harness/readiness_suite.py` runs the same checks as a pytest module.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from emulator import GuestSpec, Machine, resolve_image
from emulator.errors import SerconError

from .console import Console, ConsoleClosed, ConsoleTimeout
from .image_files import ImageError, ImageFiles, open_image, probe_format, temporary_workdir
from .linux import LinuxShell, LoginFailed, Screen

Status = Literal["pass", "fail", "warn", "skip"]


@dataclass
class Check:
    id: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def title(self) -> str:
        return CHECKS[self.id]


CheckFunction = Callable[["Facts"], Check]
#: id -> (title, function), in report order.
REGISTRY: dict[str, tuple[str, CheckFunction]] = {}
#: id -> title (what the readiness suite parametrizes over).
CHECKS: dict[str, str] = {}


def check(check_id: str, title: str) -> Callable[[CheckFunction], CheckFunction]:
    """Register a readiness check: `@check("id", "what it requires")` on a `Facts -> Check` function."""

    def register(function: CheckFunction) -> CheckFunction:
        REGISTRY[check_id] = (title, function)
        CHECKS[check_id] = title
        return function

    return register


# ------------------------------------------------------------------ facts


@dataclass
class Live:
    """What the live boot showed."""

    outcome: str  # "prompt", "quiet" (boot over, no prompt), "silent" (nothing at all), "timeout"
    boot_log: bytes
    seconds: float
    prompt_kind: str = ""
    shell: LinuxShell | None = None
    login_error: str = ""
    cmdline: str | None = None
    probe: str = "silent"  # the SysRq probe: "done", "disabled", "silent", or "untried" (ttyS0 never spoke)
    values: dict[str, str] = field(default_factory=dict)  # /proc/sys/kernel/*, TMOUT, ...
    kernel_config: str | None = None
    rescue: dict[str, str] = field(default_factory=dict)
    #: UEFI boots: the GRUB configuration on the EFI system partition (see _read_efi_grub).
    efi: dict[str, str] = field(default_factory=dict)

    @property
    def kernel_output(self) -> bool:
        return bool(KERNEL_START.search(self.boot_log))

    @property
    def before_kernel(self) -> bytes:
        first = KERNEL_START.search(self.boot_log)
        return self.boot_log[: first.start()] if first else self.boot_log


@dataclass
class Facts:
    spec: GuestSpec
    user: str
    #: The command line known before booting, and where it came from.
    cmdline: str | None = None
    cmdline_source: str = ""
    files: ImageFiles | None = None
    live: Live | None = None

    @property
    def direct_kernel(self) -> bool:
        return bool(self.spec.kernel)

    def best_cmdline(self) -> tuple[str | None, str]:
        if self.live and self.live.cmdline is not None:
            return self.live.cmdline, "the running kernel"
        return self.cmdline, self.cmdline_source

    def init_system(self) -> str | None:
        """ "systemd", "sysvinit", "busybox" or None (unknown), from the image's /sbin/init."""
        if self.files is None:
            return None
        for path in ("/sbin/init", "/init", "/usr/sbin/init"):
            target = self.files.link(path)
            if target:
                if "systemd" in target:
                    return "systemd"
                if "busybox" in target:
                    return "busybox"
            elif self.files.read(path) is not None:
                if path == "/init" and self.files.link("/sbin/init"):
                    continue
                return "sysvinit" if self.files.exists("/etc/inittab") else None
        return None

    def sysctl(self, key: str) -> tuple[int | None, str]:
        """kernel.* value: live from /proc, else from the command line and sysctl files (systemd order)."""
        name = key.split(".", 1)[1]
        if self.live and self.live.values.get(name, "-") not in ("-", ""):
            return _int(self.live.values[name]), "live /proc/sys/kernel/" + name
        value: int | None = None
        source = ""
        if self.files is not None:
            by_name: dict[str, str] = {}
            for folder in ("/usr/lib/sysctl.d", "/lib/sysctl.d", "/run/sysctl.d", "/etc/sysctl.d"):
                for entry in self.files.listdir(folder):
                    if entry.endswith(".conf"):
                        by_name[entry] = f"{folder}/{entry}"  # later folders override the same name
            paths = [by_name[n] for n in sorted(by_name)] + ["/etc/sysctl.conf"]
            for path in paths:
                text = self.files.read(path) or ""
                for line in text.splitlines():
                    m = re.match(r"\s*-?\s*" + re.escape(key).replace(r"\.", r"[./]") + r"\s*=\s*(\S+)", line)
                    if m and _int(m.group(1)) is not None:
                        value, source = _int(m.group(1)), path
        cmdline = self.best_cmdline()[0] or ""
        m = re.search(r"(?:^|\s)sysctl\." + re.escape(key) + r"=(\S+)", cmdline)
        if m:
            value, source = _int(m.group(1)), "sysctl." + key + " on the kernel command line"
        return value, source


# ------------------------------------------------------------------ offline


GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/efi/EFI/debian/grub.cfg")


def grub_cfg(files: ImageFiles | None) -> tuple[str, str] | None:
    if files is None:
        return None
    for path in GRUB_CFGS:
        text = files.read(path)
        if text is not None:
            return path, text
    return None


def first_linux_line(cfg: str) -> str | None:
    """The kernel arguments of the first `linux` command in a grub.cfg (the default entry, usually)."""
    for line in cfg.splitlines():
        words = line.split()
        if words and words[0] in ("linux", "linux16", "linuxefi"):
            return " ".join(w for w in words[2:])
    return None


def offline_facts(spec: GuestSpec, user: str, workdir: Path) -> Facts:
    facts = Facts(spec=spec, user=user)
    facts.files = open_image(spec.kernel, spec.initrd, spec.disk, workdir)
    if spec.kernel:
        facts.cmdline, facts.cmdline_source = spec.append or "", "the given --append"
    else:
        cfg = grub_cfg(facts.files)
        line = first_linux_line(cfg[1]) if cfg else None
        if cfg and line is not None:
            facts.cmdline, facts.cmdline_source = line, f"the first entry of {cfg[0]}"
    return facts


# ------------------------------------------------------------------ live

#: The kernel prints its command line twice: "Command line:" in early setup, "Kernel command line:"
#: later. Under a heavily loaded TCG host the first, printed when the console starts, was seen to
#: lose a byte in the guest's UART ("console=tyS0"), so the later one is read first.
KERNEL_CMDLINES = (re.compile(rb"Kernel command line: ([^\r\n]*)"),
                   re.compile(rb"(?<!Kernel c)Command line: ([^\r\n]*)"))
GRUB_MENU = re.compile(rb"GNU GRUB")
GRUB_COUNTDOWN = re.compile(rb"will be executed automatically in|will boot automatically in")
KERNEL_START = re.compile(rb"Linux version \d")
INIT_STARTED = re.compile(rb"Run \S+ as init process|Freeing unused kernel|systemd\[1\]|Welcome to |INIT: version")
BOOT_DONE = re.compile(rb"Reached target[^\n]*(?:Multi-User System|Graphical Interface)|Startup finished")
SYSRQ_PROBE_KEY = "w"  # "Show Blocked State": harmless, short, needs the dump bit (8) of kernel.sysrq
SYSRQ_DONE = re.compile(rb"sysrq: Show Blocked State")
SYSRQ_DISABLED = re.compile(rb"This sysrq operation is disabled")

#: Seconds of console silence after which the boot is over: systemd said it is done; init started;
#: output came but no init line; and nothing at all on ttyS0. The last two are for a command line
#: that makes the kernel print on ttyS0; when it hides the boot (quiet, loglevel, another console
#: last) or is unknown, a getty may be the first thing to print, so those waits are longer.
QUIET_AFTER_DONE, QUIET_AFTER_INIT, QUIET_NO_INIT, SILENT = 5.0, 10.0, 20.0, 40.0
QUIET_NO_INIT_HIDDEN, SILENT_HIDDEN = 40.0, 90.0


def expects_kernel_output(cmdline: str | None) -> bool:
    """Whether this command line makes the kernel print its boot on ttyS0."""
    if cmdline is None:
        return False
    consoles = _consoles(cmdline)
    return bool(consoles) and consoles[-1].startswith("ttyS0") and not _hiding(cmdline)


def watch_boot(shell: LinuxShell, limit: float, expect_output: bool = True) -> tuple[str, Screen, bytes]:
    """Read the console from the first byte until a prompt shows or the boot is over without one."""
    silent, no_init = (SILENT, QUIET_NO_INIT) if expect_output else (SILENT_HIDDEN, QUIET_NO_INIT_HIDDEN)
    console = shell.console
    screen = Screen()
    log = b""
    started = last = time.monotonic()
    pressed = False
    while True:
        data = console.read(0.4)
        now = time.monotonic()
        if data:
            screen.feed(data)
            log += data
            last = now
            continue
        if log and shell.classify(screen) in ("login", "shell", "password"):
            return "prompt", screen, log
        if now - started > limit:
            return "timeout", screen, log
        if not log:
            if now - started > silent:
                return "silent", screen, log
            continue
        settle = (QUIET_AFTER_DONE if pressed or BOOT_DONE.search(log)
                  else QUIET_AFTER_INIT if INIT_STARTED.search(log) else no_init)
        if now - last >= settle:
            if pressed:
                return "quiet", screen, log
            # Some gettys wait for a key, or the prompt went by among boot messages: Enter, once.
            console.sendline()
            pressed, last = True, now


def _sysrq_probe(machine: Machine, console: Console) -> str:
    """Send BREAK + `w` on COM1; "done", "disabled" or "silent" by what the kernel printed."""
    machine.sysrq(SYSRQ_PROBE_KEY)
    try:
        index = console.expect([SYSRQ_DONE, SYSRQ_DISABLED], timeout=10)
    except ConsoleTimeout:
        return "silent"
    return "done" if index == 0 else "disabled"


def live_facts(machine: Machine, user: str, password: str | None, limit: float,
               prompts: dict[str, str | None], expect_output: bool = True) -> Live:
    started = time.monotonic()
    console = Console.for_machine(machine, from_offset=0)
    try:
        shell = LinuxShell(console, shell_prompt=prompts.get("shell"), login_prompt=prompts.get("login"))
        outcome, screen, _ = watch_boot(shell, limit, expect_output)
        live = Live(outcome=outcome, boot_log=b"", seconds=round(time.monotonic() - started, 1))
        if outcome == "prompt":
            live.prompt_kind = shell.classify(screen)
            try:
                shell.login(user, password, timeout=30, screen=screen)
                live.shell = shell
            except (LoginFailed, ConsoleTimeout) as exc:
                live.login_error = str(exc).splitlines()[0]
        # Nothing is written to a port that never spoke (the guest may still be in firmware).
        live.probe = _sysrq_probe(machine, console) if outcome != "silent" else "untried"
        if live.shell is not None:
            _read_live(live, live.shell)
        live.boot_log = machine.read_log(0)
        if live.cmdline is None:
            match = next((m for m in (p.search(live.boot_log) for p in KERNEL_CMDLINES) if m), None)
            if match:
                live.cmdline = match.group(1).decode(errors="replace")
        return live
    finally:
        console.close()


#: One round trip for everything the checks read in the guest: `@name` lines start each section.
LIVE_PROBE = "; ".join([
    "echo @cmdline; cat /proc/cmdline",
    "for f in sysrq unknown_nmi_panic panic_on_unrecovered_nmi panic; do echo @$f; "
    "cat /proc/sys/kernel/$f 2>/dev/null || echo -; done",
    'echo @TMOUT; echo "${TMOUT:-}"',
    "echo @config; c=/boot/config-$(uname -r); if [ -r $c ]; then cat $c; else zcat /proc/config.gz 2>/dev/null; "
    "fi | grep -E '^CONFIG_(SERIAL_8250_CONSOLE|MAGIC_SYSRQ|MAGIC_SYSRQ_SERIAL)='",
    "echo @target; if test -e /lib/systemd/system/rescue.target -o -e /usr/lib/systemd/system/rescue.target; "
    "then echo yes; else echo no; fi",
    "echo @root; (cat /etc/shadow 2>/dev/null || sudo -n cat /etc/shadow 2>/dev/null) | "
    "awk -F: '$1==\"root\"{print \"root:\" $2}'",
    "echo @forced; systemctl cat rescue.service emergency.service 2>/dev/null | grep -c SYSTEMD_SULOGIN_FORCE",
    "true",
])


def _read_live(live: Live, shell: LinuxShell) -> None:
    shell.run("true")  # resynchronise after the SysRq output
    sections: dict[str, str] = {}
    name = ""
    for line in shell.run(LIVE_PROBE).output.splitlines():
        if line.startswith("@") and " " not in line:
            name = line[1:]
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    live.cmdline = sections.get("cmdline", "").strip() or None
    for key in ("sysrq", "unknown_nmi_panic", "panic_on_unrecovered_nmi", "panic", "TMOUT"):
        live.values[key] = sections.get(key, "-").strip()
    live.kernel_config = sections.get("config", "")
    live.rescue = {"target": sections.get("target", "").strip(), "root": sections.get("root", "").strip(),
                   "forced": sections.get("forced", "").strip()}
    live.efi = _read_efi_grub(shell)


ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def _read_efi_grub(shell: LinuxShell) -> dict[str, str]:
    """On a UEFI boot: the grub.cfg files on the EFI system partition (mounted read-only for the
    look if it is not mounted) and the /boot/grub/grub.cfg they load, as `where` and `text`."""
    if not shell.run("test -d /sys/firmware/efi").ok:
        return {"uefi": "no"}
    esp = shell.run(f"lsblk -nrpo NAME,PARTTYPE | awk 'tolower($2)==\"{ESP_TYPE}\"{{print $1; exit}}'").output.strip()
    if not esp:
        return {"uefi": "yes", "esp": ""}
    mounted = shell.run(f"findmnt -nro TARGET --source {esp} | head -1").output.strip()
    mount = mounted or "/run/sercon-esp"
    if not mounted and not shell.run(f"mkdir -p {mount} && mount -o ro {esp} {mount}").ok:
        return {"uefi": "yes", "esp": esp, "unreadable": "yes"}
    try:
        found = shell.run(f"find {mount}/EFI -maxdepth 2 -iname grub.cfg 2>/dev/null").output.split()
        names = [f"ESP:{path.removeprefix(mount)}" for path in found]
        text = shell.run(f"cat {' '.join(found)} 2>/dev/null").output if found else ""
    finally:
        if not mounted:
            shell.run(f"umount {mount}")
    loaded = re.search(r"^\s*(?:configfile|source)\s+\S*/boot/grub2?/grub\.cfg|^\s*set\s+prefix=\S*/boot/grub2?",
                       text, re.M)
    if loaded:  # the usual stub: the menu itself is in /boot/grub/grub.cfg on the root filesystem
        boot_cfg = shell.run("for f in /boot/grub/grub.cfg /boot/grub2/grub.cfg; do [ -r $f ] && echo $f && "
                             "break; done").output.strip()
        if boot_cfg:
            names.append(boot_cfg)
            text += shell.run(f"cat {boot_cfg}").output
    return {"uefi": "yes", "esp": esp, "where": " -> ".join(names), "text": text}


# ------------------------------------------------------------------ checks


def _int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _fix(systemd: str, sysv: str, facts: Facts) -> str:
    """A fix for the image's init system, or both when it is not known."""
    init = facts.init_system()
    if init == "systemd":
        return systemd
    if init in ("sysvinit", "busybox"):
        return sysv
    return f"systemd: {systemd}; sysvinit/busybox: {sysv}"


CMDLINE_FIX = ('put console=tty0 console=ttyS0,115200n8 at the end of GRUB_CMDLINE_LINUX in /etc/default/grub '
               "(ttyS0 last) and run update-grub (grub2-mkconfig -o /boot/grub2/grub.cfg on Red Hat family); "
               "for a -kernel boot, the same at the end of its command line")
QUIET_FIX = ("remove quiet/rhgb/splash (and loglevel=0-3) from GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub "
             "(or add plymouth.enable=0) and run update-grub; for a -kernel boot, from its command line")
GRUB_FIX = ('in /etc/default/grub set GRUB_TERMINAL="serial console", GRUB_SERIAL_COMMAND="serial --speed=115200", '
            "GRUB_TIMEOUT=5 and GRUB_TIMEOUT_STYLE=menu, then run update-grub (grub2-mkconfig -o /boot/grub2/grub.cfg "
            "on Red Hat family)")


def _consoles(cmdline: str) -> list[str]:
    return [w.split("=", 1)[1] for w in cmdline.split() if w.startswith("console=")]


def _hiding(cmdline: str) -> list[str]:
    words = cmdline.split()
    hidden = [w for w in words if w in ("quiet", "rhgb", "splash") or w.startswith("splash=")]
    hidden += [w for w in words if w.startswith("loglevel=") and (_int(w[9:]) or 0) <= 3]
    return hidden


@check("console", "console=ttyS0 is the last console= on the kernel command line")
def check_console(f: Facts) -> Check:
    cmdline, source = f.best_cmdline()
    live = f.live
    if cmdline is None:
        if live and not live.kernel_output and live.outcome in ("silent", "quiet"):
            return Check("console", "fail", "no kernel output on ttyS0 at all, and the command line is unknown "
                         "(not in a readable grub.cfg)", CMDLINE_FIX)
        return Check("console", "skip", "kernel command line unknown: not given, no readable grub.cfg, no kernel "
                     "output or shell live")
    consoles = _consoles(cmdline)
    if not consoles or not consoles[-1].startswith("ttyS0"):
        where = (f"console=ttyS0 is not the last console= ({', '.join(consoles)}): /dev/console and rescue shells "
                 f"go to {consoles[-1]}" if any(c.startswith("ttyS0") for c in consoles) else
                 "no console=ttyS0 on the kernel command line: kernel messages and rescue shells do not reach "
                 "the serial console")
        return Check("console", "fail", f"{where} (from {source})", CMDLINE_FIX)
    detail = f"console={consoles[-1]} is the last console ({' '.join(consoles)}; from {source})"
    if live and not live.kernel_output and live.outcome != "timeout":
        hidden = _hiding(cmdline)
        if hidden:
            return Check("console", "pass", f"{detail}; no kernel messages showed because of {' '.join(hidden)} "
                         "(see the quiet row)")
        config = (live.kernel_config or "") + _image_kernel_config(f)
        if config and "CONFIG_SERIAL_8250_CONSOLE=y" not in config:
            return Check("console", "fail", f"{detail}, but the kernel has no 8250 serial console driver "
                         "(CONFIG_SERIAL_8250_CONSOLE is not y): it cannot print on ttyS0",
                         "use a kernel with CONFIG_SERIAL_8250=y and CONFIG_SERIAL_8250_CONSOLE=y (Debian's, "
                         "Ubuntu's and Red Hat's have them)")
        return Check("console", "fail", f"{detail}, yet the kernel printed nothing on ttyS0: the serial driver may "
                     "be a module loaded too late (CONFIG_SERIAL_8250_CONSOLE must be y), the port may not be COM1 "
                     "(0x3f8), or a console= later in the boot loader's own line overrides this one", CMDLINE_FIX)
    return Check("console", "pass", detail)


def _image_kernel_config(f: Facts) -> str:
    if f.files is None:
        return ""
    for name in f.files.listdir("/boot"):
        if name.startswith("config-"):
            return f.files.read(f"/boot/{name}") or ""
    return ""


@check("quiet", "no quiet/rhgb/splash or low loglevel on the serial console")
def check_quiet(f: Facts) -> Check:
    cmdline, source = f.best_cmdline()
    if cmdline is None:
        return Check("quiet", "skip", "kernel command line unknown (see the console row)")
    hidden = _hiding(cmdline)
    if hidden:
        return Check("quiet", "fail", f"{' '.join(hidden)} on the kernel command line (from {source}): boot messages "
                     "(and systemd's status lines) are hidden from the serial console", QUIET_FIX)
    if f.files and (f.files.exists("/usr/sbin/plymouthd") or f.files.exists("/sbin/plymouthd")) \
            and "plymouth.enable=0" not in cmdline:
        return Check("quiet", "warn", "Plymouth is installed: with splash it takes the console",
                     "add plymouth.enable=0 to GRUB_CMDLINE_LINUX, or remove plymouth")
    return Check("quiet", "pass", f"no quiet/rhgb/splash on the kernel command line (from {source})")


def getty_offline(f: Facts) -> tuple[Status, str] | None:
    """What the image's init configuration says about a getty on ttyS0, or None if it cannot tell."""
    files = f.files
    init = f.init_system()
    if files is None or init is None:
        return None
    if init == "systemd":
        for unit in ("serial-getty@ttyS0.service", "serial-getty@.service"):
            for folder in ("/etc/systemd/system", "/run/systemd/system"):
                if files.link(f"{folder}/{unit}") == "/dev/null":
                    return "fail", f"{unit} is masked ({folder}/{unit} -> /dev/null)"
        for target in ("getty.target", "multi-user.target"):
            if files.link(f"/etc/systemd/system/{target}.wants/serial-getty@ttyS0.service"):
                return "pass", f"serial-getty@ttyS0 is enabled ({target}.wants)"
        cmdline = f.best_cmdline()[0] or ""
        if any(c.startswith("ttyS0") for c in _consoles(cmdline)):
            return "pass", "systemd-getty-generator starts serial-getty@ttyS0 for console=ttyS0"
        return "fail", "serial-getty@ttyS0 is not enabled, and without console=ttyS0 no generator starts it"
    inittab = files.read("/etc/inittab")
    if inittab is None:
        return "fail", "no /etc/inittab: busybox init then runs only a shell on the console (no getty)"
    lines = [line.strip() for line in inittab.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    serial = [line for line in lines if re.search(r"getty|login", line) and re.search(r"\bttyS\d", line)]
    on_ttys0 = [line for line in serial if re.search(r"\bttyS0\b", line)]
    if on_ttys0:
        return "pass", f"/etc/inittab: {on_ttys0[0]}"
    if serial:
        others = sorted({m for line in serial for m in re.findall(r"\bttyS\d+", line)})
        return "fail", f"/etc/inittab runs a getty on {', '.join(others)} but not on ttyS0 ({serial[0]})"
    return "fail", "/etc/inittab has no getty on ttyS0"


@check("getty", "a login prompt (getty) on ttyS0")
def check_getty(f: Facts) -> Check:
    fix = _fix("systemctl unmask serial-getty@ttyS0.service; systemctl enable serial-getty@ttyS0.service",
               "in /etc/inittab: `T0:23:respawn:/sbin/getty -L ttyS0 115200 vt100` (sysvinit) or "
               "`ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100` (busybox)", f)
    offline = getty_offline(f)
    said = f"; offline: {offline[1]}" if offline else ""
    live = f.live
    if live is None:
        if offline is None:
            return Check("getty", "skip", "cannot tell offline (init system unknown); run without --offline")
        return Check("getty", offline[0], f"offline: {offline[1]}", fix if offline[0] == "fail" else "")
    if live.outcome == "prompt":
        if live.prompt_kind == "shell":
            return Check("getty", "pass", f"a shell on ttyS0 without a login (autologin){said}")
        return Check("getty", "pass", f"login prompt on ttyS0{said}")
    why = {"quiet": f"the boot finished (init started, console quiet) after {live.seconds:.0f}s without one",
           "silent": f"nothing at all came on ttyS0 in {live.seconds:.0f}s",
           "timeout": f"none within {live.seconds:.0f}s"}[live.outcome]
    return Check("getty", "fail", f"no login prompt on ttyS0: {why}{said}", fix)


@check("password-user", "a user that logs in with a password")
def check_password_user(f: Facts) -> Check:
    live = f.live
    securetty = f.files.read("/etc/securetty") if f.files else None
    no_ttys0 = f.user == "root" and securetty is not None and "ttyS0" not in securetty.split()
    if live is None or live.outcome != "prompt":
        if no_ttys0:
            return Check("password-user", "fail", "/etc/securetty does not list ttyS0: root cannot log in there",
                         "add ttyS0 to /etc/securetty")
        return Check("password-user", "skip", "no login prompt, so no login was tried")
    if live.shell is None:
        extra = " (/etc/securetty does not list ttyS0)" if no_ttys0 else ""
        return Check("password-user", "fail", f"logging in as {f.user!r} failed{extra}: {live.login_error}",
                     f"set a password: `passwd {f.user}` (cloud consoles need a password login, not only SSH keys); "
                     "or give the right --user/--password" + ("; add ttyS0 to /etc/securetty" if no_ttys0 else ""))
    if live.shell.login_method == "autologin":
        return Check("password-user", "warn", "the console gives a shell without any login (autologin): anyone "
                     "with console access has it", "drop --autologin from the serial getty unless intended")
    if live.shell.login_method == "no-password":
        return Check("password-user", "warn", f"{f.user!r} logged in without being asked for a password: anyone "
                     "with console access can", f"set a password: `passwd {f.user}`")
    return Check("password-user", "pass", f"logged in as {f.user!r} with a password")


@check("grub-serial", "GRUB menu on the serial port, with a timeout")
def check_grub(f: Facts) -> Check:
    if f.direct_kernel:
        return Check("grub-serial", "skip", "booted with -kernel: no boot loader in this image")
    cfg = grub_cfg(f.files)
    offline = ""
    serial_cfg: bool | None = None
    if cfg:
        path, text = cfg
        serial_cfg = bool(re.search(r"^\s*serial\b", text, re.M)) and bool(
            re.search(r"^\s*terminal_output\b[^\n]*\bserial", text, re.M))
        offline = f"{path} {'sets up' if serial_cfg else 'has no'} serial terminal"
        default = f.files.read("/etc/default/grub") if f.files else None
        if default is not None and not serial_cfg and re.search(r"GRUB_TERMINAL[^\n]*serial", default):
            offline += " (/etc/default/grub asks for one: update-grub was not run)"
    live = f.live
    if live is None:
        if serial_cfg is None:
            return Check("grub-serial", "skip", "no readable grub.cfg offline")
        return Check("grub-serial", "pass" if serial_cfg else "fail", f"offline: {offline}",
                     "" if serial_cfg else GRUB_FIX)
    said = f" ({offline})" if offline else ""
    before = live.before_kernel
    if GRUB_MENU.search(before) and GRUB_COUNTDOWN.search(before):
        return Check("grub-serial", "pass", f"GRUB menu and countdown seen on ttyS0{said}")
    if GRUB_MENU.search(before):
        return Check("grub-serial", "warn", f"GRUB shows on ttyS0 but without a countdown (GRUB_TIMEOUT=0 or "
                     f"hidden){said}", GRUB_FIX)
    return Check("grub-serial", "fail", f"no GRUB menu on ttyS0 before the kernel started: a serial console user "
                 f"cannot pick an entry or edit the kernel line{said}", GRUB_FIX)


GRUB_EFI_FIX = ('in /etc/default/grub set GRUB_TERMINAL="serial console" (or GRUB_TERMINAL_OUTPUT="serial" where the '
                'firmware console is on COM1 too) and GRUB_SERIAL_COMMAND="serial --speed=115200", run update-grub, '
                "and check that the ESP's EFI/<distribution>/grub.cfg loads /boot/grub/grub.cfg (grub-install does)")


@check("grub-efi", "GRUB EFI sets up the serial terminal (grub.cfg on the ESP)")
def check_grub_efi(f: Facts) -> Check:
    """On a UEFI guest, GRUB's own configuration must put its terminal on serial. Seeing GRUB on
    COM1 is not enough: firmware whose console is on COM1 (OVMF here) copies GRUB's screen-only
    output there, while a cloud's firmware may not, and the menu is gone."""
    live = f.live
    if live is None or live.shell is None:
        return Check("grub-efi", "skip", "needs a shell on the console (see getty/password-user)")
    return judge_efi_grub(live.efi)


def grub_efi_check(shell: LinuxShell) -> Check:
    """The grub-efi check on a guest already at a shell (read the ESP now, then judge)."""
    return judge_efi_grub(_read_efi_grub(shell))


def judge_efi_grub(efi: dict[str, str]) -> Check:
    """The grub-efi verdict from what _read_efi_grub read."""
    if efi.get("uefi") != "yes":
        return Check("grub-efi", "skip", "not booted through UEFI (no /sys/firmware/efi)")
    if not efi.get("esp"):
        return Check("grub-efi", "warn", "booted through UEFI, but no EFI system partition is visible", GRUB_EFI_FIX)
    if efi.get("unreadable"):
        return Check("grub-efi", "skip", f"cannot mount the EFI system partition {efi['esp']} to read its grub.cfg")
    if not efi.get("where"):
        return Check("grub-efi", "fail", f"no grub.cfg on the EFI system partition {efi['esp']}", GRUB_EFI_FIX)
    text = efi.get("text", "")
    has_serial = re.search(r"^\s*serial\b", text, re.M)
    output = re.search(r"^\s*terminal_output\b[^\n]*\bserial\b", text, re.M)
    if has_serial and output:
        return Check("grub-efi", "pass", f"GRUB EFI's serial terminal is set up in {efi['where']}")
    missing = ", ".join(what for what, ok in (("no `serial` command", has_serial),
                                              ("no `serial` in terminal_output", output)) if not ok)
    return Check("grub-efi", "fail", f"GRUB EFI ({efi['where']}): {missing}; its menu reaches COM1 only where the "
                 "firmware copies its console there", GRUB_EFI_FIX)


def _sysctl_fix(line: str, f: Facts) -> str:
    conf = "/etc/sysctl.d/90-serial-console.conf"
    return _fix(f"echo '{line}' > {conf} (systemd-sysctl applies it at boot)",
                f"echo '{line}' > {conf} and run `sysctl -p {conf}` from an init script (busybox: "
                f"`sysctl -w {line.replace(' ', '')}` in /etc/init.d/rcS)", f)


@check("sysrq-mask", "kernel.sysrq allows the console's SysRq keys")
def check_sysrq_mask(f: Facts) -> Check:
    mask, source = f.sysctl("kernel.sysrq")
    fix = _sysctl_fix("kernel.sysrq = 1", f) + " (1 = every key; 176 = sync, remount, reboot)"
    probe = f.live.probe if f.live else None
    seen = {"done": "; a serial SysRq 'w' ran", "disabled": "; a serial SysRq 'w' was refused ('This sysrq "
            "operation is disabled')", "silent": "; a serial SysRq 'w' printed nothing", "untried": "",
            None: ""}[probe]
    where = f" ({source})" if source else ""
    if mask is None:
        if probe == "disabled":
            return Check("sysrq-mask", "fail", f"kernel.sysrq unknown{seen}", fix)
        return Check("sysrq-mask", "warn" if f.live else "skip", f"kernel.sysrq not set in the image's sysctl "
                     f"files or readable live{seen}", fix)
    if mask == 1:
        return Check("sysrq-mask", "pass", f"kernel.sysrq=1 (every key){where}{seen}")
    if mask == 0:
        return Check("sysrq-mask", "fail", f"kernel.sysrq=0: SysRq is off{where}{seen}", fix)
    if mask == 16:
        return Check("sysrq-mask", "fail", f"kernel.sysrq=16, systemd's default: only sync is allowed{where}{seen}",
                     fix)
    needed = {128: "reboot/poweroff (b, o)", 32: "remount read-only (u)", 16: "sync (s)"}
    missing = [what for bit, what in needed.items() if not mask & bit]
    if missing:
        return Check("sysrq-mask", "fail", f"kernel.sysrq={mask} does not allow {', '.join(missing)}{where}{seen}",
                     fix)
    return Check("sysrq-mask", "pass" if probe in ("done", None) else "warn",
                 f"kernel.sysrq={mask} allows sync, remount and reboot{where}{seen}", fix)


@check("sysrq-serial", "SysRq over the serial line reaches the kernel")
def check_sysrq_serial(f: Facts) -> Check:
    fix = ("use a kernel built with CONFIG_SERIAL_8250_CONSOLE=y, CONFIG_MAGIC_SYSRQ=y and "
           "CONFIG_MAGIC_SYSRQ_SERIAL=y, with console=ttyS0 and kernel.sysrq != 0")
    live = f.live
    if live is None:
        return Check("sysrq-serial", "skip", "a live check only (BREAK + key on COM1)")
    if live.probe in ("done", "disabled"):
        return Check("sysrq-serial", "pass", "BREAK + key on COM1 reached the kernel's SysRq handler")
    if live.probe == "untried":
        return Check("sysrq-serial", "fail", "not tried: nothing at all came on ttyS0 (see the console row)", fix)
    config = live.kernel_config if live.kernel_config is not None else (_image_kernel_config(f) or None)
    if config:
        missing = [opt for opt in ("CONFIG_SERIAL_8250_CONSOLE", "CONFIG_MAGIC_SYSRQ", "CONFIG_MAGIC_SYSRQ_SERIAL")
                   if f"{opt}=y" not in config]
        if missing:
            return Check("sysrq-serial", "fail", f"BREAK + key got no answer; the kernel lacks {', '.join(missing)}",
                         fix)
    return Check("sysrq-serial", "fail", "BREAK + key on COM1 got no answer (kernel.sysrq=0, or the serial "
                 "console is not ttyS0)", fix)


@check("nmi-panic", "an NMI panics the kernel (kernel.unknown_nmi_panic=1)")
def check_nmi(f: Facts) -> Check:
    nmi, source = f.sysctl("kernel.unknown_nmi_panic")
    unrecovered, _ = f.sysctl("kernel.panic_on_unrecovered_nmi")
    if nmi == 1 or unrecovered == 1:
        shown = "unset" if unrecovered is None else unrecovered
        return Check("nmi-panic", "pass", f"kernel.unknown_nmi_panic={nmi}, panic_on_unrecovered_nmi={shown}"
                     + (f" ({source})" if source else ""))
    status: Status = "fail" if f.live and f.live.shell else "warn" if f.live or nmi is None else "fail"
    if f.live is None and nmi is None:
        status = "skip"
    return Check("nmi-panic", status, f"kernel.unknown_nmi_panic={'unset' if nmi is None else nmi}: a console NMI "
                 "only prints 'Dazed and confused' instead of crashing a hung guest"
                 + ("" if f.live and f.live.shell else " (not confirmed live: no shell)"),
                 _sysctl_fix("kernel.unknown_nmi_panic = 1", f) + " (and optionally set up kdump)")


@check("panic-reboot", "a panic reboots the guest (kernel.panic > 0)")
def check_panic(f: Facts) -> Check:
    value, source = f.sysctl("kernel.panic")
    cmdline = f.best_cmdline()[0] or ""
    m = re.search(r"(?:^|\s)panic=(-?\d+)", cmdline)
    if value is None and m:
        value, source = int(m.group(1)), "panic= on the kernel command line"
    if value:
        return Check("panic-reboot", "pass", f"kernel.panic={value}: a panicked guest reboots by itself"
                     + (f" ({source})" if source else ""))
    status: Status = "fail" if value == 0 or (f.live and f.live.shell) else "skip" if f.live is None else "warn"
    return Check("panic-reboot", status, f"kernel.panic={'unset' if value is None else value}: a panicked guest "
                 "hangs until someone resets it", _sysctl_fix("kernel.panic = 10", f))


@check("tmout", "TMOUT logs idle console shells out")
def check_tmout(f: Facts) -> Check:
    fix = "printf 'TMOUT=600\\nexport TMOUT\\n' > /etc/profile.d/tmout.sh"
    if f.live and f.live.shell:
        tmout = f.live.values.get("TMOUT", "")
        if _int(tmout):
            return Check("tmout", "pass", f"TMOUT={tmout} in the login shell")
        return Check("tmout", "warn", "TMOUT is not set: an abandoned console session stays logged in", fix)
    if f.files is not None:
        sources = ["/etc/profile", "/etc/bash.bashrc"] + [f"/etc/profile.d/{n}" for n in f.files.listdir(
            "/etc/profile.d")]
        for path in sources:
            m = re.search(r"^\s*(?:export\s+|readonly\s+)?TMOUT=(\d+)", f.files.read(path) or "", re.M)
            if m and int(m.group(1)) > 0:
                return Check("tmout", "pass", f"TMOUT={m.group(1)} in {path} (offline)")
        return Check("tmout", "warn", "TMOUT is not set in /etc/profile or /etc/profile.d (offline)", fix)
    return Check("tmout", "skip", "needs a shell on the console or a readable image")


@check("rescue", "rescue/emergency target reachable with a root password")
def check_rescue(f: Facts) -> Check:
    fix = ("set a root password (`passwd root`): sulogin asks for it in rescue and emergency mode; or allow a "
           "passwordless root shell with `systemctl edit rescue.service emergency.service` adding "
           "[Service] Environment=SYSTEMD_SULOGIN_FORCE=1")
    rescue = f.live.rescue if f.live and f.live.shell else {}
    if not rescue and f.files is not None:
        shadow = f.files.read("/etc/shadow") or ""
        root = next((line.split(":")[1] for line in shadow.splitlines() if line.startswith("root:")), None)
        rescue = {"target": "yes" if f.init_system() == "systemd" else "no",
                  "root": "" if root is None else "root:" + root, "forced": "0"}
    if not rescue:
        return Check("rescue", "skip", "needs a shell on the console or a readable image")
    if rescue["target"] != "yes":
        return Check("rescue", "warn", "no systemd rescue.target in this image; init=/bin/sh from the boot "
                     "loader is the way in", "")
    if not rescue["root"].startswith("root:"):
        return Check("rescue", "skip", "cannot read /etc/shadow (log in as root, or allow sudo -n)")
    hashed = rescue["root"][5:]
    if hashed and hashed[0] not in "*!":
        return Check("rescue", "pass", "root has a password: rescue.target and emergency.target give a root shell")
    if _int(rescue.get("forced", "")):
        return Check("rescue", "pass", "root is locked but SYSTEMD_SULOGIN_FORCE=1: rescue gives a root shell")
    return Check("rescue", "fail", "root has no password: sulogin refuses rescue/emergency mode "
                 "('Cannot open access to console, the root account is locked')", fix)


# ------------------------------------------------------------------ report


@dataclass
class Report:
    image: str
    checks: list[Check] = field(default_factory=list)
    boot_seconds: float | None = None
    #: Wall time from start to verdict, and of the offline phase.
    seconds: float = 0.0
    offline_seconds: float = 0.0
    #: What the offline phase could read ("qcow2 disk, GPT: ...") and could not.
    image_description: str = ""
    notes: list[str] = field(default_factory=list)
    live: bool = True

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def get(self, check_id: str) -> Check:
        return next(c for c in self.checks if c.id == check_id)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "ok": self.ok, "boot_seconds": self.boot_seconds, "seconds": self.seconds,
                "offline_seconds": self.offline_seconds, "image_description": self.image_description,
                "notes": self.notes, "live": self.live,
                "checks": [{**asdict(c), "title": c.title} for c in self.checks]}

    def table(self) -> str:
        marks = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "skip"}
        width = max(len(c) for c in CHECKS)
        lines = [f"Serial console readiness of {self.image}"]
        if self.image_description:
            lines.append(f"  read offline: {self.image_description}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("")
        for c in self.checks:
            lines.append(f"  {marks[c.status]:<4}  {c.id:<{width}}  {c.detail}")
            if c.fix and c.status in ("fail", "warn"):
                lines.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("pass", "fail", "warn", "skip")}
        phases = f"offline {self.offline_seconds:.1f} s"
        if self.live:
            phases += f", live {self.seconds - self.offline_seconds:.1f} s"
            if self.boot_seconds is not None:
                phases += f" of which {self.boot_seconds:.1f} s to the prompt"
        lines += ["", f"{counts['pass']} passed, {counts['fail']} failed, {counts['warn']} warnings, "
                      f"{counts['skip']} skipped" + ("  -> READY" if self.ok else "  -> NOT READY"),
                  f"verdict in {self.seconds:.1f} s ({phases})"]
        return "\n".join(lines)


def evaluate(facts: Facts, report: Report) -> Report:
    report.checks = [function(facts) for _, function in REGISTRY.values()]
    return report


# ---------------------------------------------------------------------- API


def check_image(spec: GuestSpec, user: str, password: str | None, *, label: str | None = None,
                boot_timeout: float = 120.0, offline_only: bool = False,
                shell_prompt: str | None = None, login_prompt: str | None = None) -> Report:
    """Judge `spec` offline, then (unless `offline_only`) boot it in a guest of its own and confirm live."""
    started = time.monotonic()
    report = Report(image=label or spec.image or spec.disk or spec.kernel or "guest", live=not offline_only)
    # The workdir holds a raw copy of a non-raw disk, which the checks read until the verdict.
    with temporary_workdir() as workdir:
        facts = offline_facts(spec, user, Path(workdir))
        if facts.files is not None:
            report.image_description = facts.files.description
            report.notes += facts.files.notes
        elif not spec.kernel or not spec.initrd:
            report.notes.append("no image files to read offline (a kernel without initrd or disk)")
        report.offline_seconds = round(time.monotonic() - started, 1)
        if not offline_only:
            machine = Machine(spec)
            machine.start()
            try:
                facts.live = live_facts(machine, user, password, boot_timeout,
                                        {"shell": shell_prompt, "login": login_prompt},
                                        expects_kernel_output(facts.cmdline))
            finally:
                machine.stop()
            report.boot_seconds = facts.live.seconds if facts.live.outcome == "prompt" else None
        evaluate(facts, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def run_checks(machine: Machine, user: str, password: str | None, *, boot_timeout: float = 120.0,
               image: str | None = None) -> Report:
    """The live phase alone on a started guest (watched from its first byte); the caller stops it."""
    started = time.monotonic()
    spec = machine.spec or GuestSpec()
    report = Report(image=image or spec.image or str(machine.name))
    facts = Facts(spec=spec, user=user, cmdline=spec.append if spec.kernel else None,
                  cmdline_source="the guest's command line")
    facts.live = live_facts(machine, user, password, boot_timeout, {}, expects_kernel_output(facts.cmdline))
    report.boot_seconds = facts.live.seconds if facts.live.outcome == "prompt" else None
    evaluate(facts, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sercon check",
        description="Check that an image is ready for a cloud serial console (ttyS0): first from its files "
                    "offline, then by booting it.",
    )
    parser.add_argument("image", nargs="?", help="an image recipe name (see `sercon image ls`) or a disk/kernel file")
    parser.add_argument("--disk", help="a disk image (raw, qcow2, vmdk, vhd, vhdx, ...) booted by SeaBIOS, or the root "
                        "disk of --kernel; it is never modified")
    parser.add_argument("--kernel", help="a kernel (bzImage or vmlinux) booted directly")
    parser.add_argument("--initrd", help="an initrd for --kernel")
    parser.add_argument("--append", help="kernel command line for --kernel (default: console=ttyS0)")
    parser.add_argument("--user", help="login user (default: the recipe's, or root)")
    parser.add_argument("--password", help="login password (default: the recipe's)")
    parser.add_argument("--prompt", help="regular expression for the guest's shell prompt, if sercon does not "
                        "recognise it (matched against the text left of the cursor, colours removed)")
    parser.add_argument("--login-prompt", help="regular expression for the getty's login prompt, likewise")
    parser.add_argument("--memory", type=int, help="guest memory in MiB (default 512, or the recipe's)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="upper bound in seconds for the live boot to show a prompt (default %(default)s); the "
                        "boot usually ends sooner: at a prompt, or when init started and the console went quiet")
    parser.add_argument("--offline", action="store_true", help="only read the image; do not boot it")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    return parser


def disk_format(path: str) -> str:
    """The format qemu-img sees (raw, qcow2, vmdk, vpc, vhdx, ...); SerconError with one line if unreadable."""
    return probe_format(path)


def spec_from_args(args: argparse.Namespace) -> tuple[GuestSpec, str]:
    """The guest to check: a recipe or file (IMAGE), a disk (--disk), or a kernel (--kernel, with --initrd,
    --append and optionally --disk for its root filesystem)."""
    if bool(args.image) + bool(args.disk and not args.kernel) + bool(args.kernel) != 1:
        raise SerconError("give exactly one of: IMAGE (recipe name or file), --disk FILE, --kernel FILE "
                          "(--kernel may take a --disk with its root filesystem)")
    if args.initrd and not args.kernel:
        raise SerconError("--initrd goes with --kernel")
    for given in (args.kernel, args.initrd, args.disk):
        if given and not Path(given).exists():
            raise SerconError(f"no such file: {given}")
    if args.image:
        if Path(args.image).exists() and not Path(args.image).is_dir():
            probe_format(args.image) if not _is_kernel(args.image) else None
        spec, label = resolve_image(args.image), args.image
        if spec.disk and not spec.kernel:
            spec = spec.replace(disk_format=probe_format(spec.disk))
    elif args.kernel:
        if not _is_kernel(args.kernel):
            raise SerconError(f"{args.kernel}: not a Linux kernel (no ELF header, no bzImage 'HdrS' signature)")
        spec = GuestSpec(kernel=args.kernel, initrd=args.initrd, append=args.append or "console=ttyS0,115200n8",
                         disk=args.disk, disk_format=probe_format(args.disk) if args.disk else None,
                         image=Path(args.kernel).name)
        label = args.kernel
    else:
        spec = GuestSpec(disk=args.disk, disk_format=probe_format(args.disk), image=Path(args.disk).name)
        label = args.disk
    if spec.disk:
        spec = spec.replace(disk_snapshot=True)  # checking never writes to the user's image
    if args.memory:
        spec = spec.replace(memory_mb=args.memory)
    return spec, label


def _is_kernel(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(0x210)
    except OSError as exc:
        raise SerconError(f"cannot read {path}: {exc.strerror}") from None
    return head[:4] == b"\x7fELF" or head[0x202:0x206] == b"HdrS"


def check_main(argv: list[str] | None = None) -> int:
    """`sercon check`: 0 when nothing fails, 1 when a check fails, 2 when the image could not be checked."""
    args = build_parser().parse_args(argv)
    try:
        spec, label = spec_from_args(args)
        user = args.user or spec.user or "root"
        password = args.password if args.password is not None else spec.password
        if password is None and not args.offline:
            raise SerconError("give the guest's login with --user and --password (a password user is itself "
                              "one of the requirements)")
        report = check_image(spec, user, password, label=label, boot_timeout=args.timeout, offline_only=args.offline,
                             shell_prompt=args.prompt, login_prompt=args.login_prompt)
    except (SerconError, ImageError, ConsoleClosed) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if args.json:
            print(json.dumps({"image": args.image or args.disk or args.kernel, "ok": False, "error": message}))
        else:
            print(f"sercon check: {message}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(check_main())
