"""`SacConsole`: drive Windows' Special Administration Console (SAC, over EMS) on a serial console.

    from harness.console import Console
    from harness.sac import SacConsole

    sac = SacConsole(Console.for_machine(machine))
    sac.wait_for_banner()                    # "Computer is booting, SAC started and initialized."
    print(sac.channels())                    # `ch`, parsed into SacChannel rows
    cmd = sac.open_cmd("Administrator", "secret")   # cmd, ch -si N, login, unique prompt
    print(cmd.run("ver").output)
    sac.return_to_sac()                      # Esc Tab 0
    machine.nmi(); print(sac.wait_for_bugcheck())   # Bugcheck(code=0x80, name="NMI_HARDWARE_FAILURE")

How SAC differs from a Linux shell, and what this module does about it:

- SAC wants a bare CR (or Ctrl-C, which it takes as Enter). It echoes what is typed, answers, then
  prints `SAC>` with no newline. Events (`EVENT: The CMD command is now available.`, new channel,
  channel closed) arrive at any time and reprint the prompt, so a command's answer is only taken
  after its own echo `SAC>command`; every event seen on the way is kept in `events`.
- The screen is 80x24 with no scrollback, and a Command Prompt channel is a VT-UTF8 screen that
  Windows redraws with cursor moves. Everything read is passed through a small line renderer
  (`ScreenText`): CR returns to column 0 and overwrites, cursor positioning starts a new line,
  other escape sequences are dropped, BEL is counted (`bells`). Long cmd output is paged through
  `more` (`-- More  --` answered with a space), because what scrolls off is gone.
- A cmd channel starts with `Username:`, `Domain  :` and `Password:` prompts; after login the
  driver sets `prompt` to a marker with a random nonce, so a command's end is unambiguous, and
  reads `%ERRORLEVEL%` with a second command when asked.
- A bugcheck (NMI with `NMICrashDump=1` is 0x80 NMI_HARDWARE_FAILURE) shows as EMS's
  `<BP><INSTANCE CLASSNAME="BLUESCREEN">` XML with the stop code and a `*** STOP:` line; while
  waiting for anything else, it raises `GuestBugchecked` at once instead of timing out.

The same driver runs against real Windows (`make test-windows` with `WINDOWS_IMAGE`) and against
sercon's SAC simulator (`images/sac-sim`), which `id` reports as "SAC simulator (sercon)".

What this driver is checked against, plainly: it is written to Microsoft's documented behaviour
(the SAC command reference, EMS's XML output, Azure Serial Console for Windows; sacsim.c lists
each document by title and section), and it has been run only against the simulator, which
models those documents. It has not been run against a real Windows guest, because none can be
obtained where sercon is developed. Text that the documents do not show is a guess until then.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pexpect

from emulator.errors import SerconError

from .console import Console, ConsoleClosed, ConsoleTimeout

ESC = "\x1b"
ESC_TAB = "\x1b\t"
#: `SAC>` but not the `!SAC>` EMS prints after a bugcheck.
SAC_PROMPT = re.compile(r"(?<!!)SAC>")
BANNER = re.compile(r"Computer is booting, SAC started and initialized\.")
MORE_PROMPT = re.compile(r"-- More(?: \(\d+%\))? *--")
SAC_PAGE_PROMPT = re.compile(r"Press any key to continue\.*|Press <Enter> to continue\.*")
SWITCH_END = re.compile(r"Use any other key to view this channel\.")
CMD_AVAILABLE = "The CMD command is now available."


def _partial_at_end(word: str) -> str:
    """A regex for a non-empty beginning of `word` that runs to the end of the text read so far."""
    nested = ""
    for ch in reversed(word[1:]):
        nested = f"(?:{re.escape(ch)}{nested})?"
    return re.escape(word[0]) + nested + r"\Z"


def event_pattern(text: str = r"[^\n]*") -> re.Pattern[str]:
    """A whole SAC event: `EVENT:   TEXT` and, when the event names one, its `Channel: NAME` line.

    The serial line delivers an event a few bytes at a time, so the pattern matches only a complete
    event: the channel line must have ended (`Channel: C` is not a channel named "C"), and an event
    without one counts only once the next text cannot be the start of a `Channel:` line.
    """
    return re.compile(
        r"EVENT:[ \t]+(?P<text>(?:" + text + r")[^\n]*)\n"
        r"(?:Channel:[ \t]*(?P<channel>\S+)[ \t]*\n|(?!\Z)(?!Channel:)(?!" + _partial_at_end("Channel:") + "))"
    )


#: An event in text already read whole (what `expect` consumed): its end is the end of the event.
EVENT_RE = re.compile(r"EVENT:[ \t]+(?P<text>[^\n]*)(?:\nChannel:[ \t]*(?P<channel>\S+))?")
NEW_CHANNEL = "A new channel has been created"
CHANNEL_CLOSED = "A channel has been closed"
CHANNEL_ROW = re.compile(r"^\s*(?P<index>\d+)\s+\((?P<status>[A-Z]{1,3})\)\s+(?P<name>\S+)\s*$", re.M)
ERROR_RE = re.compile(
    r"^(?:Error:[^\n]*|Unrecognized command\.[^\n]*|Unable to launch a Command Prompt\.[^\n]*"
    r"(?:\n(?!\n)[^\n]*)*|That process does not exist\.|The specified [^\n]*)",
    re.M,
)
USERNAME_PROMPT = re.compile(r"Username\s*:\s*$", re.M)
DOMAIN_PROMPT = re.compile(r"Domain\s*:\s*$", re.M)
PASSWORD_PROMPT = re.compile(r"Password\s*:\s*$", re.M)
LOGIN_FAILED = re.compile(r"Unable to authenticate[^\n]*|[Tt]he user name or password is incorrect[^\n]*|"
                          r"Logon failure[^\n]*")
STOPCODE_XML = re.compile(r'<PROPERTY NAME="STOPCODE" TYPE="string"><VALUE>"?(0x[0-9A-Fa-f]+)"?</VALUE>')
STOP_LINE = re.compile(r"\*\*\* STOP: (0x[0-9A-Fa-f]+)\s*\(([^)]*)\)")
STOP_NAME = re.compile(r"Stop code:\s*([A-Z0-9_]+)")
BUGCHECK_START = re.compile(r'<INSTANCE CLASSNAME="BLUESCREEN">|\*\*\* STOP: 0x|Stop code:\s*[A-Z0-9_]+\n')
BOOT_MANAGER = re.compile(r"Windows Boot Manager|Choose an operating system to start|Advanced Boot Options|"
                          r"Boot Options")

#: Bugcheck names sercon knows by code (the stop-code XML carries only the number).
BUGCHECK_NAMES = {
    0x80: "NMI_HARDWARE_FAILURE",
    0xE2: "MANUALLY_INITIATED_CRASH",
    0xEF: "CRITICAL_PROCESS_DIED",
    0x7B: "INACCESSIBLE_BOOT_DEVICE",
    0x9F: "DRIVER_POWER_STATE_FAILURE",
    0xD1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
    0x50: "PAGE_FAULT_IN_NONPAGED_AREA",
    0x1E: "KMODE_EXCEPTION_NOT_HANDLED",
    0x3B: "SYSTEM_SERVICE_EXCEPTION",
}


# --------------------------------------------------------------------------- errors


class SacError(SerconError):
    """SAC answered a command with an error (the message is SAC's own text)."""


class CmdNotAvailable(SacError):
    """`cmd` failed: the service that launches Command Prompt channels has not registered yet."""


class SacLoginFailed(SacError):
    """A Command Prompt channel refused the credentials."""


class GuestBugchecked(SerconError):
    """Windows stopped with a bugcheck (blue screen) while the driver waited for something else."""

    def __init__(self, bugcheck: Bugcheck) -> None:
        super().__init__(f"the guest bugchecked: {bugcheck}")
        self.bugcheck = bugcheck


# ---------------------------------------------------------------------- parsed data


@dataclass(frozen=True)
class SacChannel:
    """One row of `ch`: `1 (AV)    Cmd0001`."""

    index: int
    status: str
    name: str

    @property
    def active(self) -> bool:
        return self.status.startswith("A")


@dataclass(frozen=True)
class ChannelInfo:
    """The switch screen shown by `ch -si N` or Esc Tab."""

    name: str
    description: str = ""
    type: str = ""
    guid: str = ""
    application_type: str = ""


@dataclass(frozen=True)
class SacEvent:
    """`EVENT: ...` lines, with the `Channel:` line that some carry."""

    text: str
    channel: str | None = None


@dataclass(frozen=True)
class Bugcheck:
    """A Windows stop: code (0x80), name (NMI_HARDWARE_FAILURE) and up to four parameters."""

    code: int
    name: str | None = None
    parameters: tuple[int, ...] = ()

    def __str__(self) -> str:
        params = ", ".join(f"0x{p:X}" for p in self.parameters)
        return f"bugcheck 0x{self.code:X} {self.name or '(unknown name)'}" + (f" ({params})" if params else "")


@dataclass
class CmdResult:
    """What `CmdChannel.run()` saw: the output lines (echo and prompt removed) and %ERRORLEVEL%."""

    command: str
    output: str
    exit_status: int | None = None
    events: list[SacEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_status in (0, None)

    def __str__(self) -> str:
        return self.output


# ------------------------------------------------------------------------- parsers


def parse_channel_list(text: str) -> list[SacChannel]:
    """Rows of SAC's `ch` output."""
    return [SacChannel(int(m["index"]), m["status"], m["name"]) for m in CHANNEL_ROW.finditer(text)]


def parse_events(text: str) -> list[SacEvent]:
    """Every `EVENT:` in `text`, in order."""
    return [SacEvent(m["text"].strip(), m["channel"]) for m in EVENT_RE.finditer(text)]


def parse_error(text: str) -> str | None:
    """SAC's error message in a command's answer, joined onto one line; None if it is not an error."""
    match = ERROR_RE.search(text)
    return unwrap(match.group(0)) if match else None


def unwrap(text: str, width: int = 80) -> str:
    """Lines joined into one: SAC cuts long lines at exactly 80 columns, even inside a word."""
    out = ""
    for line in text.split("\n"):
        if out and not out.endswith("\0"):
            out += " "
        out = out.replace("\0", "") + line.rstrip("\n")
        if len(line) >= width:
            out += "\0"
    return out.replace("\0", "").strip()


def parse_switch_screen(text: str) -> ChannelInfo | None:
    """The `Name:` / `Description:` / `Type:` / `Channel GUID:` screen of a channel switch."""
    fields = parse_key_values(text)
    if "Name" not in fields:
        return None
    return ChannelInfo(
        name=fields["Name"], description=fields.get("Description", ""), type=fields.get("Type", ""),
        guid=fields.get("Channel GUID", ""), application_type=fields.get("Application Type GUID", ""),
    )


def parse_key_values(text: str) -> dict[str, str]:
    """`Key: value` lines (the `id` output, a switch screen) into a dict; later keys win."""
    result = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith(" ") and "<" not in key:
            result[key.strip()] = value.strip()
    return result


def parse_machine_info(text: str) -> dict[str, str]:
    """The fields of EMS's `<machine-info>` XML (name, guid, os-version, os-build-number, ...)."""
    block = re.search(r"<machine-info>(.*?)</machine-info>", text, re.S)
    if not block:
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"<([\w-]+)>([^<]*)</\1>", block.group(1))}


def parse_bugcheck(text: str) -> Bugcheck | None:
    """A bugcheck from EMS's stop-code XML and/or the `*** STOP:` line; None if there is none."""
    code: int | None = None
    params: tuple[int, ...] = ()
    xml = STOPCODE_XML.search(text)
    if xml:
        code = int(xml.group(1), 16)
    stop = STOP_LINE.search(text)
    if stop:
        code = int(stop.group(1), 16) if code is None else code
        try:
            params = tuple(int(p.strip(), 16) for p in stop.group(2).split(",") if p.strip())
        except ValueError:
            params = ()
    named = STOP_NAME.search(text)
    if code is None:
        if not named:
            return None
        reverse = {v: k for k, v in BUGCHECK_NAMES.items()}
        if named.group(1) not in reverse:
            return None
        code = reverse[named.group(1)]
    name = named.group(1) if named else BUGCHECK_NAMES.get(code)
    return Bugcheck(code=code, name=name, parameters=params)


# -------------------------------------------------------------------- the renderer

_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
_OTHER_ESC = re.compile(r"\x1b[()][0-9A-Za-z]|\x1b[=>78DEMc]")


class ScreenText:
    """Turns a VT100 byte stream into plain lines, the way a terminal would show them.

    CR returns to column 0 (later text overwrites), BS moves left, cursor positioning and screen
    clears start a new line, erase-in-line truncates, other escape sequences are dropped, BEL is
    counted. `text` is what has not been consumed yet: finished lines plus the current line.
    """

    def __init__(self) -> None:
        self.done = ""
        self.line: list[str] = []
        self.col = 0
        self.bells = 0
        self._pending = ""

    @property
    def text(self) -> str:
        return self.done + "".join(self.line)

    def feed(self, data: str) -> None:
        data = self._pending + data
        self._pending = ""
        i = 0
        n = len(data)
        while i < n:
            ch = data[i]
            if ch == ESC:
                match = _CSI.match(data, i) or _OTHER_ESC.match(data, i)
                if match is None:
                    if n - i < 16 and re.fullmatch(r"\x1b(\[[0-9;?]*)?|\x1b[()]", data[i:]):
                        self._pending = data[i:]  # an escape sequence split across reads
                        return
                    i += 1
                    continue
                self._escape(match)
                i = match.end()
                continue
            if ch == "\n":
                self._newline()
            elif ch == "\r":
                self.col = 0
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch == "\a":
                self.bells += 1
            elif ch == "\t":
                self._put(" ")
            elif ch >= " " or ch == "\x00":
                if ch != "\x00":
                    self._put(ch)
            i += 1

    def _put(self, ch: str) -> None:
        if self.col < len(self.line):
            self.line[self.col] = ch
        else:
            self.line.extend(" " * (self.col - len(self.line)))
            self.line.append(ch)
        self.col += 1

    def _newline(self) -> None:
        self.done += "".join(self.line).rstrip() + "\n"
        self.line = []
        self.col = 0

    def _escape(self, match: re.Match[str]) -> None:
        if not match.group(0).startswith("\x1b["):
            return
        final = match.group(2)
        if final in "Hf" or final == "J":
            if self.line:
                self._newline()
        elif final == "K":
            del self.line[self.col:]
        elif final == "C":
            self.col += int(match.group(1) or 1)
        elif final == "D":
            self.col = max(0, self.col - int(match.group(1) or 1))

    def consume(self, end: int) -> str:
        """Remove and return the first `end` characters of `text`."""
        if end <= len(self.done):
            taken, self.done = self.done[:end], self.done[end:]
            return taken
        into_line = end - len(self.done)
        taken = self.done + "".join(self.line[:into_line])
        self.done = ""
        self.line = self.line[into_line:]
        self.col = max(0, self.col - into_line)
        return taken


# ---------------------------------------------------------------------- the driver


class SacConsole:
    """SAC on one serial console. From creation on, it reads the console (not `console.expect`)."""

    def __init__(self, console: Console, *, timeout: float = 60.0) -> None:
        self.console = console
        self.timeout = timeout
        self.screen = ScreenText()
        #: Every SAC event seen, in order.
        self.events: list[SacEvent] = []
        self.machine_info: dict[str, str] = {}
        self.cmd_available = False
        #: Bugchecks seen (a GuestBugchecked was raised for each one met while waiting).
        self.bugchecks: list[Bugcheck] = []
        self._boot_events = 0
        leftover = bytes(console.spawn.buffer or b"")
        console.spawn.buffer = b""
        if leftover:
            self.screen.feed(leftover.decode("utf-8", errors="replace"))

    # --------------------------------------------------------------- reading

    @property
    def bells(self) -> int:
        """How many BEL characters (0x07) the console has sent since this driver started."""
        return self.screen.bells

    def _read_some(self, timeout: float) -> bool:
        try:
            data: bytes = self.console.spawn.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return False
        except pexpect.EOF:
            raise ConsoleClosed(f"the console of {self.console.name} closed; last lines:\n{self._tail()}") from None
        self.screen.feed(data.decode("utf-8", errors="replace"))
        return True

    def _tail(self, lines: int = 15) -> str:
        return "\n".join(self.console.tail.lines(lines).splitlines()[-lines:])

    def _timeout_error(self, what: str, timeout: float) -> ConsoleTimeout:
        message = f"timed out after {timeout:.0f}s waiting for {what} on {self.console.name}"
        if self.console.machine is not None:
            try:
                self.console.machine.check_alive()
            except SerconError as exc:
                return ConsoleTimeout(f"{message}: {exc}")
        return ConsoleTimeout(f"{message}; last console lines:\n{self._tail()}")

    def expect(self, patterns: re.Pattern[str] | str | Sequence[re.Pattern[str] | str], timeout: float | None = None,
               *, what: str | None = None, bugcheck_ok: bool = False) -> tuple[int, re.Match[str], str]:
        """Wait for one of `patterns` in the rendered text; returns (index, match, text before it).

        The text up to the end of the match is consumed; events in it are recorded. A bugcheck
        seen first raises GuestBugchecked (unless `bugcheck_ok`).
        """
        plist: list[re.Pattern[str] | str] = (
            [patterns] if isinstance(patterns, str | re.Pattern) else list(patterns))
        compiled: list[re.Pattern[str]] = [re.compile(p) if isinstance(p, str) else p for p in plist]
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen.text
            best: tuple[int, int, re.Match[str]] | None = None
            for index, pattern in enumerate(compiled):
                match = pattern.search(text)
                if match and (best is None or match.start() < best[1]):
                    best = (index, match.start(), match)
            if not bugcheck_ok:
                crash = BUGCHECK_START.search(text)
                if crash and (best is None or crash.start() <= best[1]):
                    raise GuestBugchecked(self._finish_bugcheck(deadline))
            if best is not None:
                index, _, match = best
                consumed = self.screen.consume(match.end())
                self._note(consumed)
                return index, match, consumed[: match.start()]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                shown = what or " or ".join(repr(p.pattern) for p in compiled)
                raise self._timeout_error(shown, timeout)
            self._read_some(min(remaining, 1.0))

    def _note(self, text: str) -> None:
        for event in parse_events(text):
            self.events.append(event)
            if event.text.startswith(CMD_AVAILABLE):
                self.cmd_available = True
        info = parse_machine_info(text)
        if info:
            self.machine_info = info

    def _finish_bugcheck(self, deadline: float) -> Bugcheck:
        """Read the rest of a bugcheck screen (up to the STOP line, or a short quiet spell) and parse it."""
        settle = time.monotonic() + 10
        while not STOP_LINE.search(self.screen.text) and time.monotonic() < min(deadline, settle):
            if not self._read_some(1.0) and "</BP>" in self.screen.text:
                break
        stop = STOP_LINE.search(self.screen.text)
        text = self.screen.consume(stop.end() if stop else len(self.screen.text))
        self._note(text)
        bugcheck = parse_bugcheck(text) or Bugcheck(code=-1, name="(unparsed blue screen)")
        self.bugchecks.append(bugcheck)
        return bugcheck

    def send(self, data: str) -> None:
        self.console.send(data)

    # ------------------------------------------------------------------ SAC

    def wait_for_banner(self, timeout: float | None = None) -> str:
        """Wait for `Computer is booting, SAC started and initialized.` and the `SAC>` after it."""
        self.expect(BANNER, timeout, what="the SAC banner")
        self.cmd_available = False
        self._boot_events = len(self.events)
        _, _, text = self.expect(SAC_PROMPT, timeout, what="SAC> after the banner")
        return text

    def sync(self, timeout: float | None = None) -> None:
        """Press Enter and wait for a fresh `SAC>` (when it is unknown what is on screen)."""
        self.send("\r")
        self.expect(SAC_PROMPT, timeout, what="SAC>")

    def command(self, line: str, *, check: bool = True, enter: str = "\r", timeout: float | None = None) -> str:
        """Run one SAC command at `SAC>` and return its answer (pages are turned); SacError if it failed."""
        self.send(line + enter)
        self.expect(_echo(line), timeout, what=f"the echo of {line!r}")
        parts = []
        while True:
            index, _, before = self.expect([SAC_PROMPT, SAC_PAGE_PROMPT], timeout, what=f"the answer to {line!r}")
            parts.append(before)
            if index == 0:
                break
            self.send(" ")
        answer = "".join(parts).strip("\n")
        error = parse_error(answer)
        if check and error:
            raise (CmdNotAvailable if error.startswith("Unable to launch") else SacError)(
                f"SAC answered {line!r} with: {error}")
        return answer

    def help(self) -> str:
        return self.command("?")

    def channels(self) -> list[SacChannel]:
        """`ch`: the channel list."""
        return parse_channel_list(self.command("ch"))

    def identification(self) -> dict[str, str]:
        """`id`: computer name, GUID, build, product, ..."""
        return parse_key_values(self.command("id"))

    def ip_info(self) -> str:
        """`i`: network numbers and their IP addresses."""
        return self.command("i")

    def tlist(self) -> str:
        """`t`: the process list (paged by SAC when paging is on)."""
        return self.command("t")

    def kill(self, pid: int) -> str:
        return self.command(f"k {pid}")

    def lock(self) -> str:
        """`lock`: every Command Prompt channel asks for credentials again."""
        return self.command("lock")

    def wait_for_event(self, text: str | re.Pattern[str], timeout: float | None = None, *,
                       since: int | None = None) -> SacEvent:
        """The first event whose text matches, among those seen from index `since` of `events`
        (default: the start of this boot) or, failing that, the next one to arrive."""
        pattern = re.compile(re.escape(text)) if isinstance(text, str) else text
        for event in self.events[self._boot_events if since is None else since:]:
            if pattern.search(event.text):
                return event
        seen = len(self.events)
        self.expect(event_pattern(pattern.pattern), timeout, what=f"EVENT {pattern.pattern!r}")
        for event in self.events[seen:]:
            if pattern.search(event.text):
                return event
        raise AssertionError("unreachable: the matched event was recorded by expect()")

    def wait_for_cmd_available(self, timeout: float | None = None) -> None:
        """Wait for `EVENT: The CMD command is now available.` (unless it was seen already)."""
        if not self.cmd_available:
            self.wait_for_event(CMD_AVAILABLE, timeout)

    def create_cmd_channel(self, *, wait: bool = True, timeout: float | None = None) -> str:
        """`cmd`: a new Command Prompt channel; returns its name (Cmd0001).

        With `wait`, a `cmd` refused during boot is retried once the CMD-available event came.
        """
        try:
            self.command("cmd", timeout=timeout)
        except CmdNotAvailable:
            if not wait:
                raise
            self.wait_for_cmd_available(timeout)
            self.command("cmd", timeout=timeout)
        # The event follows the answer; it belongs to this `cmd` because the answer was read first.
        since = len(self.events)
        event = self.wait_for_event(NEW_CHANNEL, timeout, since=since)
        if event.channel is None:
            raise SacError(f"SAC's new-channel event named no channel: {event.text!r}")
        if len(self.events) > since:  # the event was read just now: its prompt follows
            self.expect(SAC_PROMPT, timeout, what="SAC> after the new-channel event")
        return event.channel

    # ---------------------------------------------------------- channels

    def switch_to(self, channel: int | str, timeout: float | None = None) -> ChannelInfo:
        """`ch -si N` / `ch -sn NAME`: show that channel's switch screen (not yet viewed)."""
        line = f"ch -si {channel}" if isinstance(channel, int) else f"ch -sn {channel}"
        self.send(line + "\r")
        self.expect(_echo(line), timeout, what=f"the echo of {line!r}")
        index, _, before = self.expect([SWITCH_END, SAC_PROMPT], timeout, what="the channel switch screen")
        if index == 1:
            raise SacError(f"SAC refused {line!r}: {parse_error(before) or before.strip()}")
        return self._switch_info(before)

    def _switch_info(self, text: str) -> ChannelInfo:
        info = parse_switch_screen(text)
        if info is None:
            raise SacError(f"could not read the channel switch screen:\n{text}")
        return info

    def next_channel(self, timeout: float | None = None) -> ChannelInfo:
        """Esc Tab: the next channel's switch screen."""
        self.send(ESC_TAB)
        _, _, before = self.expect(SWITCH_END, timeout, what="the channel switch screen after Esc Tab")
        return self._switch_info(before)

    def view(self) -> None:
        """Any key on a switch screen: view that channel (Enter is sent)."""
        self.send("\r")

    def return_to_sac(self, timeout: float | None = None) -> None:
        """Esc Tab 0: back to the SAC channel, at a fresh `SAC>`."""
        self.send(ESC_TAB + "0")
        self.expect(SAC_PROMPT, timeout, what="SAC> after Esc Tab 0")

    def close_channel(self, channel: int | str) -> str:
        line = f"ch -ci {channel}" if isinstance(channel, int) else f"ch -cn {channel}"
        return self.command(line)

    def open_cmd(self, user: str, password: str, domain: str = "", *, timeout: float | None = None) -> CmdChannel:
        """A logged-in Command Prompt: `cmd`, switch to it, view it, log in, set a marker prompt."""
        name = self.create_cmd_channel(timeout=timeout)
        rows = self.channels()
        index = next((row.index for row in rows if row.name == name), None)
        if index is None:
            raise SacError(f"the new channel {name!r} is not in the channel list: {rows}")
        self.switch_to(index, timeout)
        self.view()
        channel = CmdChannel(self, name, index)
        channel.login(user, password, domain, timeout=timeout)
        return channel

    # ------------------------------------------------------ power and crashes

    def restart(self) -> None:
        """`restart`: Windows restarts at once (wait_for_banner() sees it come back)."""
        self.send("restart\r")

    def shutdown(self) -> None:
        """`shutdown`: Windows powers off at once."""
        self.send("shutdown\r")

    def crashdump(self, timeout: float | None = None) -> Bugcheck:
        """`crashdump`: a manual bugcheck (0xE2); needs crash dumps enabled."""
        self.send("crashdump\r")
        return self.wait_for_bugcheck(timeout)

    def wait_for_bugcheck(self, timeout: float | None = None) -> Bugcheck:
        """Wait for a blue screen on the console and return what it says."""
        try:
            self.expect(BUGCHECK_START, timeout, what="a bugcheck (blue screen)", bugcheck_ok=False)
        except GuestBugchecked as crash:
            return crash.bugcheck
        raise AssertionError("unreachable: a bugcheck marker always raises GuestBugchecked")

    # --------------------------------------------------------- boot manager

    def wait_for_boot_manager(self, timeout: float | None = None) -> str:
        """The Windows Boot Manager on the serial console (needs `bcdedit /set {bootmgr} bootems yes`)."""
        _, match, before = self.expect(BOOT_MANAGER, timeout, what="the Windows Boot Manager")
        return before + match.group(0)

    def press_f8(self) -> None:
        """F8 (Advanced Boot Options) as EMS terminals send it: Esc 8."""
        self.send(ESC + "8")


def status_pattern(nonce: str) -> re.Pattern[str]:
    """The line `echo SCX<nonce>_%ERRORLEVEL%` prints, matched only once the line has ended: a read
    can stop inside the number (`9009` arriving as `900` then `9`)."""
    return re.compile(r"SCX" + nonce + r"_(-?\d+)\r?\n")


class CmdChannel:
    """A Command Prompt channel reached through SAC; created by `SacConsole.open_cmd()`."""

    def __init__(self, sac: SacConsole, name: str, index: int) -> None:
        self.sac = sac
        self.name = name
        self.index = index
        self.nonce = secrets.token_hex(3)
        self.prompt_re = re.compile(r"SC" + self.nonce + r"(?P<cwd>[A-Za-z]:\\[^\n>]*)>")
        self.status_re = status_pattern(self.nonce)
        self.cwd: str | None = None

    def login(self, user: str, password: str, domain: str = "", *, timeout: float | None = None) -> None:
        """Answer the Username / Domain / Password prompts of the channel on screen, then set the prompt."""
        sac = self.sac
        sac.expect(USERNAME_PROMPT, timeout, what="the cmd channel's Username: prompt")
        sac.send(user + "\r")
        sac.expect(DOMAIN_PROMPT, timeout, what="Domain:")
        sac.send(domain + "\r")
        sac.expect(PASSWORD_PROMPT, timeout, what="Password:")
        sac.send(password + "\r")
        # Any cmd prompt (ours, if this is a login again after `lock`, since cmd itself kept running).
        generic_prompt = re.compile(r"(?m)^(?:SC[0-9a-f]+)?[A-Za-z]:\\[^\n>]*>$")
        index, match, _ = sac.expect([generic_prompt, LOGIN_FAILED, USERNAME_PROMPT], timeout,
                                     what="the command prompt after login")
        if index != 0:
            raise SacLoginFailed(f"{self.name} refused the login of {domain + chr(92) if domain else ''}{user}: "
                                 f"{match.group(0).strip() or 'asked for the user name again'}")
        sac.send(f"prompt SC{self.nonce}$P$G\r")
        found = sac.expect(self.prompt_re, timeout, what="the marker prompt")[1]
        self.cwd = found["cwd"]

    def run(self, command: str, *, page: bool = True, status: bool = False, timeout: float | None = None) -> CmdResult:
        """Run `command` and return its output.

        `page`: pipe through `more` and turn the pages (the screen keeps only 24 lines). `status`:
        read %ERRORLEVEL% with a second command (with `page` that is `more`'s status, as in Windows).
        """
        sac = self.sac
        events_before = len(sac.events)
        line = f"{command} | more" if page and "|" not in command else command
        sac.send(line + "\r")
        # The echo right after our prompt (a channel redraw may show older prompts and output first).
        echo = r"\n?".join(re.escape(ch) for ch in line)
        sac.expect(re.compile(r"(?:\A|" + self.prompt_re.pattern + ")" + echo + r"[ \t]*\n"), timeout,
                   what=f"the echo of {line!r}")
        parts = []
        while True:
            index, match, before = sac.expect([self.prompt_re, MORE_PROMPT], timeout,
                                              what=f"the end of {command!r}")
            parts.append(before)
            if index == 0:
                self.cwd = match["cwd"]
                break
            sac.send(" ")
        output = _trim("".join(parts))
        exit_status = None
        if status:
            sac.send(f"echo SCX{self.nonce}_%ERRORLEVEL%\r")
            exit_status = int(sac.expect(self.status_re, timeout, what="%ERRORLEVEL%")[1].group(1))
            sac.expect(self.prompt_re, timeout, what="the prompt after %ERRORLEVEL%")
        return CmdResult(command, output, exit_status, sac.events[events_before:])

    def leave(self) -> None:
        """Back to SAC (Esc Tab 0); the channel stays open and logged in."""
        self.sac.return_to_sac()

    def exit(self, timeout: float | None = None) -> None:
        """`exit`: the channel closes and SAC comes back."""
        self.sac.send("exit\r")
        self.sac.wait_for_event(CHANNEL_CLOSED, timeout, since=len(self.sac.events))
        self.sac.expect(SAC_PROMPT, timeout, what="SAC> after exit")


def _echo(line: str) -> re.Pattern[str]:
    """The echo of a line typed at `SAC>`: at the start of the unread text (the prompt was read
    already) or after a `SAC>` reprinted by an event that came in between."""
    return re.compile(r"(?:\A|(?<!!)SAC>)" + re.escape(line) + r"[ \t]*\n")


def _trim(text: str) -> str:
    """Command output without trailing spaces and the blank lines around it."""
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)
