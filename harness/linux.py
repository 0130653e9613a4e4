"""`LinuxShell`: log in on a Linux serial console and run commands with clean output and exit status.

How it stays robust where prompt matching usually breaks:

- Login reads the console through a terminal emulator (`Screen`) and judges the text left of the
  cursor once the line is quiet: banners, colours, cursor moves, right prompts and motd lines
  above the prompt cannot be mistaken for it. Patterns for unusual prompts: `login_prompt=`,
  `shell_prompt=` (see `PROMPT_HELP`).
- After login it turns off the terminal's echo and the shell's line editor, and sets a prompt
  that carries a random marker and `$?`. One command costs one round trip: send the line, wait
  for the marker; the exit status comes with the prompt. The marker as typed (quoted, with a
  literal `$?`) never matches its own expansion, so the echo of the setup line cannot fool it.
- Kernel messages printed while a command runs (the console is also /dev/console) are lines that
  start with a printk timestamp newer than any the console had shown before the command. They
  are taken out of `output` and returned in `Result.kernel_messages`, so nothing is hidden and
  `dmesg` output (older timestamps) stays in `output`.
- A command that times out gets Ctrl-C, the shell is waited for, and `CommandTimeout` is raised
  with the partial output: the next `run()` works.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

import pyte

from emulator.errors import SerconError

from .console import Console, ConsoleTimeout, GuestSocketSpawn

#: What firmware and boot loaders print on the serial console, and what only comes after them.
BOOT_LOADER_MARKERS = (b"Welcome to GRUB", b"GNU GRUB", b"BdsDxe: ", b"SeaBIOS (version", b"Booting from ")
KERNEL_OR_LATER = re.compile(rb"Linux version |\[\s*\d+\.\d{6}\]|login: |Welcome to |emergency mode|\$ |# ")
#: Default prompt patterns, matched against the text left of the cursor on the cursor's row of a
#: terminal emulator fed with the console (colours, cursor moves, bracketed paste, a zsh right
#: prompt and the banner above do not count). Override with `LinuxShell(login_prompt=, shell_prompt=)`.
LOGIN_PROMPT = re.compile(r"(?i)(?:\blog ?in|\busername|\buser)(?: name)?: ?$")
PASSWORD_PROMPT = re.compile(r"(?i)\bpassword(?: for [^:]*)?: ?$")
SHELL_PROMPT = re.compile(r"[#$%>\u276f\u00bb\u279c] ?$")
LOGIN_INCORRECT = re.compile(r"Login incorrect|Authentication failure|Permission denied|Login failed")
PASSWORD_EXPIRED = re.compile(r"(?i)password has expired|required to change your password|password change required"
                              r"|(?:current|new|old|retype)[^:\n]*password: ?$")
PROMPT_HELP = ("pass the prompt as a regular expression matched against the text left of the cursor: "
               "LinuxShell(console, shell_prompt=r'...', login_prompt=r'...'), `pytest --sercon-prompt REGEX`, "
               "or `sercon check --prompt REGEX`")
BRACKETED_PASTE = re.compile(rb"\x1b\[\?2004[hl]")
PANIC = re.compile(rb"Kernel panic - not syncing[^\r\n]*")
KERNEL_LINE = re.compile(rb"\[\s*(\d+)\.(\d{6})\] [^\n]*(?:\n|$)")
TIMESTAMP = re.compile(rb"\[\s*(\d+)\.(\d{6})\] ")


class KernelClock:
    """The newest printk timestamp seen on a console: what `run()` compares kernel lines with."""

    def __init__(self) -> None:
        self.latest = -1.0
        self._carry = b""

    def feed(self, data: bytes) -> None:
        # A timestamp may be split across reads (the UART often delivers a few bytes at a time):
        # keep the tail of everything seen so far, not only of the last read.
        window = self._carry + data
        self._carry = window[-24:]
        for match in TIMESTAMP.finditer(window):
            ts = int(match.group(1)) + int(match.group(2)) / 1e6
            if ts > self.latest:
                self.latest = ts


class LoginFailed(SerconError):
    """The guest refused the credentials, or no login prompt came."""


class CommandTimeout(SerconError):
    """A command did not finish in time; it was interrupted with Ctrl-C."""

    def __init__(self, message: str, partial_output: str) -> None:
        super().__init__(message)
        self.partial_output = partial_output


class CommandFailed(SerconError):
    """`run(..., check=True)` and the command exited non-zero."""


class GuestPanicked(SerconError):
    """The kernel panicked while a command ran."""


@dataclass
class Result:
    command: str
    output: str
    exit_status: int
    #: Kernel console messages that arrived while the command ran (removed from `output`).
    kernel_messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def __str__(self) -> str:
        return self.output


_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?>=]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMc])")


def _strip(data: bytes) -> str:
    """Console bytes as text without escape sequences or carriage returns."""
    return _ESCAPE.sub("", data.decode("utf-8", errors="replace")).replace("\r", "")


class Screen:
    """A terminal emulator (pyte) fed with console bytes: what a person at the console would see.

    Login and prompt recognition look at `cursor_text()`, the text left of the cursor on its row,
    so ANSI colours, cursor movement, a right prompt drawn and stepped back over, bracketed-paste
    switches and banners printed above the prompt do not matter. 512 columns: even very long
    hostnames do not wrap.
    """

    def __init__(self, columns: int = 512, lines: int = 50) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen)

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)

    def cursor_text(self) -> str:
        cursor = self.screen.cursor
        row = self.screen.buffer[cursor.y]
        return "".join(row[x].data for x in range(cursor.x)).replace("\x00", " ")

    def last_lines(self, count: int = 15) -> str:
        lines = [line.rstrip() for line in self.screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines[-count:])


def _as_regex(pattern: str | re.Pattern[str] | None, default: re.Pattern[str]) -> re.Pattern[str]:
    if pattern is None:
        return default
    return pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)


class LinuxShell:
    """A logged-in shell on a Linux serial console (busybox ash, bash, dash)."""

    #: How long login() lets the console stay quiet, with no prompt showing, before it presses
    #: Enter (the prompt went by before the console was opened, or the getty waits for a key).
    quiet_enter_s = 6.0

    def __init__(self, console: Console, *, shell_prompt: str | re.Pattern[str] | None = None,
                 login_prompt: str | re.Pattern[str] | None = None) -> None:
        self.console = console
        #: What the guest's shell prompt looks like (left of the cursor, colours removed).
        self.shell_prompt = _as_regex(shell_prompt, SHELL_PROMPT)
        #: What its getty's login prompt looks like.
        self.login_prompt = _as_regex(login_prompt, LOGIN_PROMPT)
        #: The login shell, as found by login(): "posix" (sh, bash, zsh, ash, dash) or "fish".
        self.login_shell = ""
        #: How login() got in: "password", "no-password" (the guest asked none) or "autologin".
        self.login_method = ""
        self.nonce = secrets.token_hex(4)
        self.prompt = re.compile(rb"__sc" + self.nonce.encode() + rb"_(\d+)_# ")
        self.logged_in_as: str | None = None
        self.kernel_clock = KernelClock()
        console.tail.hooks.append(self.kernel_clock.feed)

    @classmethod
    def resume(cls, console: Console, nonce: str, user: str = "root", timeout: float = 30.0) -> LinuxShell:
        """A shell prepared earlier by `login()` (its marker `nonce`), e.g. in a restored snapshot."""
        shell = cls(console)
        shell.nonce = nonce
        shell.prompt = re.compile(rb"__sc" + nonce.encode() + rb"_(\d+)_# ")
        console.sendline()
        console.expect(shell.prompt, timeout=timeout)
        shell.logged_in_as = user
        return shell

    # ----------------------------------------------------------------- login

    def wait_for_login_prompt(self, timeout: float = 60.0) -> str:
        """Wait until the console shows a login prompt (or, with autologin, a shell prompt).

        Returns "login" or "shell". Enter is pressed only after the guest has printed something and
        then stayed quiet without a prompt (the prompt went by before, or the getty waits for a key).
        """
        screen = Screen()
        kind = self._await_prompt(screen, time.monotonic() + timeout, "a login prompt", ("login", "shell"))
        return kind

    def login(self, user: str = "root", password: str | None = "sercon", timeout: float = 60.0,
              screen: Screen | None = None) -> None:
        """Log in at the getty's prompt and prepare the shell for `run()`.

        Works with any banner above the prompt, any hostname, agetty --autologin (a shell with no
        login), users without a password and slow refusals. Raises `LoginFailed` with the reason:
        wrong credentials, an expired password the guest wants changed, no prompt, or a prompt it
        cannot recognise (the message shows the console and how to pass a pattern).

        `screen`: the console as a caller already watched it (sercon check's boot watch), so a
        prompt that is already showing counts.
        """
        seen = screen is not None
        screen = screen or Screen()
        deadline = time.monotonic() + timeout
        kind = self._await_prompt(screen, deadline, "a login prompt", ("login", "shell"), seen=seen)
        self.login_method = "autologin" if kind == "shell" else "no-password"
        tries = 0
        while kind == "login":
            tries += 1
            if tries > 2:
                raise LoginFailed(f"login as {user!r} on {self.console.name}: the guest keeps asking for the user "
                                  f"name; last console lines:\n{screen.last_lines()}")
            self.console.sendline(user)
            kind = self._await_prompt(screen, time.monotonic() + 30, f"a password or shell prompt after {user!r}",
                                      ("password", "shell", "login"), typed=True)
            if kind == "password":
                self.login_method = "password"
                self.console.sendline(password or "")
                kind = self._await_prompt(screen, time.monotonic() + 30, "a shell prompt after the password",
                                          ("shell", "login", "password"), typed=True)
                if kind == "password":
                    raise LoginFailed(f"login as {user!r} on {self.console.name} was refused: the guest asked for "
                                      f"the password again; last console lines:\n{screen.last_lines()}")
        self._prepare_shell()
        self.logged_in_as = user

    def _await_prompt(self, screen: Screen, deadline: float, what: str, wanted: tuple[str, ...],
                      typed: bool = False, seen: bool = False) -> str:
        """Read the console until it is quiet at one of the `wanted` prompts; return which.

        `typed`: we just sent something, so "Login incorrect" or an expired-password dialogue in
        what arrives now is the answer to it.
        """
        settle, enter_after = 0.4, self.quiet_enter_s
        fresh = ""  # text that arrived since this call started
        got_output = seen
        last_data = time.monotonic()
        enters = 0
        while True:
            now = time.monotonic()
            data = self.console.read(min(settle, max(0.0, deadline - now)))
            if data:
                screen.feed(data)
                fresh += _strip(data)
                got_output = True
                last_data = time.monotonic()
                if len(fresh) > 8192:
                    fresh = fresh[-8192:]
                continue
            now = time.monotonic()
            kind = self._classify(screen.cursor_text(), fresh if typed else "") if got_output else ""
            if kind in ("incorrect", "expired"):
                self._refused(kind, screen)
            if kind in wanted:
                return kind
            if now >= deadline:
                self._no_prompt(what, screen, kind)
            quiet_long = now - last_data >= enter_after * (enters + 1)
            # The boot's log, read only when one of the two checks below will look at it: every
            # 0.4 s of a firmware's silence would otherwise read the events and the log again.
            boot_log = self._boot_log() if (got_output and not kind) or (quiet_long and enters < 3) else None
            if typed and got_output and not kind and "password" in wanted and \
                    self._prompt_under_messages(fresh.encode()) == "password":
                # The password prompt, then kernel messages on its row and below: the prompt still
                # waits for the password. The quiet-Enter below would answer it with an empty one.
                return "password"
            buried = self._buried_prompt(boot_log) if got_output and not kind else ""
            if buried in wanted and enters < 3:
                # A getty or shell prompt, then only kernel messages (printk lands on the console
                # whenever it likes): the prompt is waiting under them. Enter shows it again, at
                # once instead of after `enter_after` of quiet.
                enters += 1
                self.console.sendline()
                continue
            # Quiet with no prompt: the prompt scrolled by before we looked (a console opened on a
            # running guest), or the getty waits for a key. Press Enter, but never before the guest
            # has printed anything (on this console, or before it was opened on a sercon guest; a
            # physical board's cannot, so it gets a longer wait).
            spoken = got_output or bool(self.console.tail.data) or self.console.start_offset > 0 or (
                self.console.machine is None and now - last_data >= 2 * enter_after)
            if spoken and quiet_long and enters < 3 and not self._in_boot_loader(boot_log):
                enters += 1
                self.console.sendline()

    def _boot_log(self) -> bytes | None:
        """What the current boot of a sercon guest printed so far (None: not a sercon guest's console)."""
        machine = self.console.machine
        if machine is None:
            return None
        try:
            starts = [e["offset"] for e in machine.events() if e["event"] in ("power_on", "boot", "restored")]
            return machine.read_log(starts[-1] if starts else 0)
        except (OSError, ValueError, KeyError, SerconError):
            return None

    def _buried_prompt(self, log: bytes | None) -> str:
        """"login" or "shell" if this boot printed that prompt and after it only kernel messages,
        else "". Never "password" (Enter would send an empty password), never across a reboot or
        while firmware or a boot loader is last (a key there stops GRUB), and not on a console
        without a guest's boots to tell them apart."""
        if log is None or self._in_boot_loader(log):
            return ""
        kind = self._prompt_under_messages(log)
        return kind if kind in ("login", "shell") else ""

    def _prompt_under_messages(self, text: bytes) -> str:
        """The prompt `text` ends with once its kernel messages are taken out ("" if it has none)."""
        cleaned = KERNEL_LINE.sub(b"", text)
        if len(cleaned) == len(text):
            return ""  # no kernel message at all: nothing is buried
        return self._classify(_strip(cleaned[-4096:]).rstrip("\n").rsplit("\n", 1)[-1], "")

    @staticmethod
    def _in_boot_loader(log: bytes | None) -> bool:
        """True while firmware or a boot loader is the last thing this boot of a sercon guest printed.

        A key pressed then goes to them, not to a getty: GRUB stops its countdown (and under OVMF
        was seen to stop altogether), a firmware may open its setup. Quiet spells there are normal
        (OVMF prints nothing for seconds), so login() waits for the kernel instead of pressing Enter.
        """
        if log is None:
            return False
        loader = max((log.rfind(marker) for marker in BOOT_LOADER_MARKERS), default=-1)
        return loader >= 0 and not KERNEL_OR_LATER.search(log, loader)

    def classify(self, screen: Screen) -> str:
        """What the console shows now: "login", "password", "shell", "expired" or "" (no prompt)."""
        return self._classify(screen.cursor_text(), "")

    def _classify(self, cursor_text: str, fresh: str) -> str:
        if fresh and LOGIN_INCORRECT.search(fresh):
            return "incorrect"
        if fresh and PASSWORD_EXPIRED.search(fresh):
            return "expired"
        text = cursor_text.rstrip()
        if PASSWORD_EXPIRED.search(text):
            return "expired"
        if self.login_prompt.search(text):
            return "login"
        if PASSWORD_PROMPT.search(text):
            return "password"
        if self.shell_prompt.search(text):
            return "shell"
        return ""

    def _refused(self, kind: str, screen: Screen) -> None:
        name = self.console.name
        if kind == "expired":
            raise LoginFailed(f"the password has expired: the guest on {name} asks for a new one before it gives "
                              "a shell. Log in once by hand and set one, or in the image run `chage -d $(date "
                              f"+%Y-%m-%d) USER` (or `passwd USER`); last console lines:\n{screen.last_lines(8)}")
        raise LoginFailed(f"login on {name} was refused: wrong password or user name (the guest answered "
                          f"'Login incorrect'); last console lines:\n{screen.last_lines(8)}")

    def _no_prompt(self, what: str, screen: Screen, kind: str) -> None:
        shown = screen.last_lines()
        current = screen.cursor_text().strip()
        if self.console.machine is not None:
            try:
                self.console.machine.check_alive()
            except SerconError as exc:
                raise LoginFailed(f"waited in vain for {what} on {self.console.name}: {exc}") from None
        if current:
            raise LoginFailed(f"waited in vain for {what} on {self.console.name}: the console waits at {current!r}, "
                              "which is not a "
                              f"prompt sercon recognises; {PROMPT_HELP}. Last console lines:\n{shown}")
        raise LoginFailed(f"waited in vain for {what} on {self.console.name}; last console lines:\n"
                          f"{shown or '(nothing)'}")

    def _prepare_shell(self) -> None:
        """Make the shell at the prompt ready for `run()`: no echo, no line editor, the marker prompt.

        A probe line tells POSIX shells (sh, ash, dash, bash, zsh) from fish, which prints its
        version where the others print nothing. fish gets `exec sh`: commands then run in a POSIX
        shell with the login's environment (fish has no `$?` and draws its own line editor).
        """
        probe = re.compile(rb"__sp" + self.nonce.encode() + rb"\[([^]$\r\n]*)\]")
        self.console.sendline(f'echo __sp"{self.nonce}""[$FISH_VERSION]"')
        try:
            self.console.expect(probe, timeout=30)
        except ConsoleTimeout:
            raise LoginFailed(f"logged in on {self.console.name}, but the shell did not run `echo`: it is neither a "
                              "POSIX shell nor fish; last console lines:\n" + self.console.tail.lines()) from None
        self.login_shell = "fish" if self.console.match.group(1) else "posix"
        if self.login_shell == "fish":
            self.console.sendline("exec /bin/sh")
            # fish reads ahead while it runs: type nothing more until sh's own prompt shows.
            self._await_prompt(Screen(), time.monotonic() + 30, "a sh prompt after `exec /bin/sh`", ("shell",))
        # Line editing off (so the tty's -echo holds in bash and ash; zsh: no ZLE, no right prompt, no
        # PROMPT_SP marks, `$?` expanded in PS1), a pager-free dumb terminal, and the marker prompt.
        # `'__sc'"NONCE"'_$?_# '` expands to `__scNONCE_0_# `.
        setup = (
            "set +o emacs +o vi 2>/dev/null; stty -echo 2>/dev/null; "
            "export TERM=dumb PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0; unset PROMPT_COMMAND; "
            '[ -n "$ZSH_VERSION" ] && { unsetopt zle prompt_cr prompt_sp; setopt prompt_subst; '
            "unset precmd_functions RPROMPT RPS1; }; "
            f"PS2=''; PS1='__sc'\"{self.nonce}\"'_$?_# '"
        )
        self.console.sendline(setup)
        self.console.expect(self.prompt, timeout=30)

    # ------------------------------------------------------------------- run

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> Result:
        """Run one command line (several lines are run as one via eval); return output and status."""
        if self.logged_in_as is None:
            raise SerconError("log in first: shell.login(user, password)")
        line = command
        if "\n" in command:
            line = "eval '" + command.replace("'", "'\\''") + "'"
        threshold = self.kernel_clock.latest
        # Bytes that arrived before this command (the rest of a line an earlier expect() matched
        # into, late kernel output) are not its output. On a sercon guest the serial log is the
        # fence: whatever the guest had printed when the command was sent, even if it reaches this
        # console later, stands in the log below `fence`.
        fence = self._log_fence()
        self.console.discard_buffered()
        self.console.send(line + "\r")
        try:
            index = self.console.expect([self.prompt, PANIC], timeout=timeout)
        except ConsoleTimeout:
            partial = self._clean(self.console.tail.data[-4096:], threshold)[0]
            self.interrupt()
            raise CommandTimeout(
                f"{command!r} did not finish within {timeout:.0f}s on {self.console.name}; it was interrupted "
                f"with Ctrl-C and the shell is usable again. Output so far:\n{partial[-1500:]}",
                partial,
            ) from None
        if index == 1:
            tail = self.console.drain(quiet=0.5)
            raise GuestPanicked(
                f"the guest kernel panicked while running {command!r}:\n"
                + (self.console.before + self.console.match.group(0) + tail).decode(errors="replace")[-3000:]
            )
        status = int(self.console.match.group(1))
        before = self.console.before
        spawn = self.console.spawn
        if fence is not None and isinstance(spawn, GuestSocketSpawn):
            starts_at = spawn.offset - len(spawn.buffer or b"") - len(self.console.match.group(0)) - len(before)
            before = before[max(0, fence - starts_at):]
        output, messages = self._clean(before, threshold)
        result = Result(command=command, output=output, exit_status=status, kernel_messages=messages)
        if check and status != 0:
            raise CommandFailed(f"{command!r} exited with status {status}:\n{output[-2000:]}")
        return result

    def interrupt(self, timeout: float = 15.0) -> None:
        """Ctrl-C, then wait for the shell's prompt."""
        self.console.send(b"\x03")
        try:
            self.console.expect(self.prompt, timeout=timeout)
        except ConsoleTimeout:
            self.console.send(b"\x03\r")
            self.console.expect(self.prompt, timeout=timeout)

    def _log_fence(self) -> int | None:
        """The guest's serial log size now, if this console is a sercon guest's (else None)."""
        spawn = self.console.spawn
        if not isinstance(spawn, GuestSocketSpawn):
            return None
        try:
            return spawn.log_size()
        except OSError:
            return None

    def _clean(self, raw: bytes, threshold: float) -> tuple[str, list[str]]:
        messages: list[str] = []

        def strip(match: re.Match[bytes]) -> bytes:
            ts = int(match.group(1)) + int(match.group(2)) / 1e6
            if ts > threshold:
                messages.append(match.group(0).decode(errors="replace").rstrip("\r\n"))
                return b""
            return match.group(0)

        text = BRACKETED_PASTE.sub(b"", raw).replace(b"\r\n", b"\n")
        text = KERNEL_LINE.sub(strip, text)
        output = text.replace(b"\r", b"").decode("utf-8", errors="replace")
        return output, messages

    def logout(self) -> None:
        self.console.sendline("exit")
        self.logged_in_as = None
