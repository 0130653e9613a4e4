"""`LinuxShell`: log in on a Linux serial console and run commands with clean output and exit status.

How it stays robust where prompt matching usually breaks:

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
from dataclasses import dataclass, field

from emulator.errors import SerconError

from .console import Console, ConsoleTimeout

LOGIN_PROMPT = re.compile(rb"[\r\n](?!Last login)[\w.-]* ?login: ")  # not the motd's "Last login: ..."
PASSWORD_PROMPT = re.compile(rb"[Pp]assword: ?")
LOGIN_INCORRECT = re.compile(rb"Login incorrect|Authentication failure|Permission denied")
SHELL_PROMPT = re.compile(rb"[#$] ?$|[#$] \x1b\[6n")
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


class LinuxShell:
    """A logged-in shell on a Linux serial console (busybox ash, bash, dash)."""

    def __init__(self, console: Console) -> None:
        self.console = console
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

    def wait_for_login_prompt(self, timeout: float = 60.0) -> None:
        """Wait for `login:`; if none shows (the prompt scrolled by earlier), press Enter once."""
        try:
            self.console.expect(LOGIN_PROMPT, timeout=timeout)
        except ConsoleTimeout:
            self.console.sendline()
            try:
                self.console.expect(LOGIN_PROMPT, timeout=15)
            except ConsoleTimeout as exc:
                raise LoginFailed(f"no login prompt on {self.console.name}: {exc}") from None

    def login(self, user: str = "root", password: str | None = "sercon", timeout: float = 60.0) -> None:
        """Log in at the getty's prompt and prepare the shell for `run()`."""
        self.wait_for_login_prompt(timeout)
        self.console.sendline(user)
        index = self.console.expect([PASSWORD_PROMPT, SHELL_PROMPT, LOGIN_INCORRECT], timeout=30)
        if index == 0:
            self.console.sendline(password or "")
            index = self.console.expect([LOGIN_INCORRECT, SHELL_PROMPT, LOGIN_PROMPT], timeout=30)
            if index != 1:
                raise LoginFailed(
                    f"login as {user!r} on {self.console.name} was refused: wrong password "
                    "(the guest answered 'Login incorrect')"
                )
        elif index == 2:
            raise LoginFailed(f"login as {user!r} on {self.console.name} was refused")
        self._prepare_shell()
        self.logged_in_as = user

    def _prepare_shell(self) -> None:
        # Line editing off (so the tty's -echo holds in bash and ash), a pager-free dumb terminal,
        # and the marker prompt. `'__sc'"NONCE"'_$?_# '` expands to `__scNONCE_0_# `.
        setup = (
            "set +o emacs +o vi 2>/dev/null; stty -echo 2>/dev/null; "
            "export TERM=dumb PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0; unset PROMPT_COMMAND; "
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
        # into, late kernel output) are not its output.
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
        output, messages = self._clean(self.console.before, threshold)
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

    def _clean(self, raw: bytes, threshold: float) -> tuple[str, list[str]]:
        messages: list[str] = []

        def strip(match: re.Match[bytes]) -> bytes:
            ts = int(match.group(1)) + int(match.group(2)) / 1e6
            if ts > threshold:
                messages.append(match.group(0).decode(errors="replace").rstrip("\r\n"))
                return b""
            return match.group(0)

        text = raw.replace(b"\r\n", b"\n")
        text = KERNEL_LINE.sub(strip, text)
        output = text.replace(b"\r", b"").decode("utf-8", errors="replace")
        return output, messages

    def logout(self) -> None:
        self.console.sendline("exit")
        self.logged_in_as = None
