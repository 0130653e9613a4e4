"""`Console`: a pexpect expect object on a serial console, wherever that console is.

- `Console.for_machine(machine)`: a sercon guest, through its owner's console socket (the same
  stream every other client sees; the owner's serial log keeps every byte).
- `Console.for_url("rfc2217://host:port")`, `("/dev/ttyUSB0")`, `("socket://host:port")`: any
  pyserial URL, so the same drivers and tests run against a physical board's console.

`expect()` timeouts raise `ConsoleTimeout`, whose message shows the pattern and the last console
lines, instead of pexpect's dump of internal state.
"""

from __future__ import annotations

import os
import re
import select
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pexpect
from pexpect.spawnbase import SpawnBase

from emulator.errors import SerconError
from emulator.machine import Machine

Pattern = str | bytes | re.Pattern[bytes] | type[pexpect.EOF] | type[pexpect.TIMEOUT]

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleTimeout(SerconError, AssertionError):
    """Nothing matched in time. The message has the pattern and the last console lines."""


class ConsoleClosed(SerconError):
    """The console stream ended (the owner went away, or the serial device closed)."""


class _Tail:
    """pexpect `logfile_read` sink: keeps the last bytes for error messages and lets hooks watch."""

    def __init__(self, keep: int = 16384, transcript: Path | None = None) -> None:
        self.keep = keep
        self.data = b""
        self.hooks: list[Callable[[bytes], None]] = []
        self._transcript = transcript.open("ab") if transcript else None

    def write(self, data: bytes) -> None:
        self.data = (self.data + data)[-self.keep :]
        if self._transcript:
            self._transcript.write(data)
        for hook in self.hooks:
            hook(data)

    def flush(self) -> None:
        if self._transcript:
            self._transcript.flush()

    def lines(self, count: int = 15) -> str:
        text = _ESCAPES.sub(b"", self.data).decode("utf-8", errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-count:])


class SerialSpawn(SpawnBase):  # type: ignore[type-arg]  # generic only in the stubs
    """pexpect over a pyserial port (any URL pyserial opens)."""

    def __init__(self, port: Any, timeout: float = 30, maxread: int = 4096) -> None:
        super().__init__(timeout=timeout, maxread=maxread, encoding=None)
        self.port = port
        self.name = f"<serial {port.port}>"
        self.closed = False

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> bytes:
        if timeout == -1:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiting = self.port.in_waiting
            if waiting:
                data: bytes = self.port.read(min(size, waiting))
                self._log(data, "read")  # type: ignore[attr-defined]
                return data
            if deadline is not None and time.monotonic() >= deadline:
                raise pexpect.TIMEOUT("timeout reading from serial port")
            time.sleep(0.001)

    def send(self, s: bytes | str) -> int:
        data = s.encode() if isinstance(s, str) else s
        self._log(data, "send")  # type: ignore[attr-defined]
        written: int = self.port.write(data)
        self.port.flush()
        return written

    def isalive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True
        self.port.close()


class GuestSocketSpawn(SpawnBase):  # type: ignore[type-arg]  # generic only in the stubs
    """pexpect over a sercon guest's console socket, which knows where in the serial log it is.

    `offset` is the log offset of the next byte to arrive. If the owner drops this client (it
    stopped reading while the guest printed more than the owner buffers for one client), a
    harness or read-only console reconnects from `offset`: the owner replays the gap from the
    serial log, so not one byte is lost, and `resumed` counts the times it happened. An
    interactive console is not resumed (that would take the console back from whoever took it
    over); nor is any console of a guest whose owner is gone: both end in pexpect.EOF.
    """

    def __init__(self, machine: Machine, sock: socket.socket, *, mode: str, client: str, offset: int,
                 replay_from: int | None = None, timeout: float = 30, maxread: int = 65536) -> None:
        super().__init__(timeout=timeout, maxread=maxread, encoding=None)
        self.machine = machine
        self.sock = sock
        self.mode = mode
        self.client = client
        self.offset = offset
        self.resumed = 0
        self.name = f"<console of {machine.name}>"
        self.closed = False
        self.child_fd = sock.fileno()
        #: Log bytes between `offset` and where the owner's replay starts (it caps replays): read
        #: from the serial log file and handed out before anything from the socket.
        self._gap = b""
        self._log_path = str(machine.serial_log_path)
        if replay_from is not None:
            self._fill_gap(replay_from)

    def log_size(self) -> int:
        """The serial log's size now: every byte the guest has printed so far (OSError if gone)."""
        return os.stat(self._log_path).st_size

    def _fill_gap(self, replay_from: int) -> None:
        if replay_from > self.offset:
            self._gap = self.machine.read_log(self.offset, replay_from - self.offset)

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> bytes:
        if timeout == -1:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._gap:  # a gap the replay left (at connect, or after a resume) comes first
                data, self._gap = self._gap[:size], self._gap[size:]
                self.offset += len(data)
                self._log(data, "read")  # type: ignore[attr-defined]
                return data
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], remaining)[0]:
                raise pexpect.TIMEOUT("timeout reading from the console socket")
            try:
                data = self.sock.recv(size)
            except ConnectionError:
                data = b""
            if data:
                return self._got(data)
            if not self._resume():
                self.closed = True
                raise pexpect.EOF("the console socket closed")

    def read_ready(self, size: int = 65536) -> bytes:
        """Bytes that have already arrived, without waiting: b"" if none (EOF as read_nonblocking)."""
        if not self._gap:
            try:
                data = self.sock.recv(size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return b""
            except ConnectionError:
                data = b""
            if data:
                return self._got(data)
        try:  # a gap to hand out, or the socket closed: read_nonblocking resumes or raises EOF
            return bytes(self.read_nonblocking(size, timeout=0))
        except pexpect.TIMEOUT:
            return b""

    def _got(self, data: bytes) -> bytes:
        self.offset += len(data)
        self._log(data, "read")  # type: ignore[attr-defined]
        return data

    def _resume(self) -> bool:
        """Reconnect from `offset` after the owner dropped this client; False if it cannot be."""
        if self.closed or self.mode == "interactive" or not self.machine.is_running():
            return False
        try:
            sock, reply = self.machine.open_console(self.mode, client=self.client, from_offset=self.offset)
        except (SerconError, OSError):
            return False
        self.sock.close()
        self.sock = sock
        self.child_fd = sock.fileno()
        self._fill_gap(int(reply.get("replay_from", self.offset)))
        self.resumed += 1
        return True

    def send(self, s: bytes | str) -> int:
        data = s.encode() if isinstance(s, str) else s
        self._log(data, "send")  # type: ignore[attr-defined]
        try:
            self.sock.sendall(data)
        except ConnectionError:
            if not self._resume():
                raise
            self.sock.sendall(data)
        return len(data)

    def isalive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Console:
    """Expect-style access to one serial console."""

    def __init__(
        self, spawn: GuestSocketSpawn | SerialSpawn, *, name: str, tail: _Tail,
        machine: Machine | None = None, port: Any = None, start_offset: int = 0,
    ) -> None:
        self.spawn = spawn
        self.name = name
        self.tail = tail
        self.machine = machine
        self._port = port
        #: Serial log offset of the first byte this console received.
        self.start_offset = start_offset
        self.default_timeout = 30.0

    @classmethod
    def for_machine(cls, machine: Machine, *, mode: str = "harness", from_offset: int | None = 0,
                    client: str = "harness") -> Console:
        sock, reply = machine.open_console(mode, client=client, from_offset=from_offset)
        tail = _Tail()
        live = int(reply["offset"])
        start = (from_offset if from_offset >= 0 else max(0, live + from_offset)) if from_offset is not None else live
        spawn = GuestSocketSpawn(machine, sock, mode=mode, client=client, offset=start,
                                 replay_from=int(reply.get("replay_from", start)))
        spawn.logfile_read = tail
        return cls(spawn, name=machine.name or "guest", tail=tail, machine=machine, start_offset=start)

    @property
    def offset(self) -> int:
        """Serial log offset of the next byte this console will receive (guest consoles only)."""
        if not isinstance(self.spawn, GuestSocketSpawn):
            raise SerconError(f"{self.name} is not a sercon guest's console: it has no log offset")
        return self.spawn.offset

    @property
    def _sock(self) -> socket.socket | None:
        """The current console socket (a resume replaces it), for raw measurements."""
        return self.spawn.sock if isinstance(self.spawn, GuestSocketSpawn) else None

    @classmethod
    def for_url(cls, url: str, *, baudrate: int = 115200, transcript: Path | None = None) -> Console:
        import serial

        try:
            port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise SerconError(f"cannot open serial port {url}: {exc}") from exc
        tail = _Tail(transcript=transcript)
        spawn = SerialSpawn(port)
        spawn.logfile_read = tail
        return cls(spawn, name=url, tail=tail, port=port)

    # ------------------------------------------------------------------ expect

    def expect(self, pattern: Pattern | Sequence[Pattern], timeout: float | None = None) -> int:
        """Wait for a pattern (or any of a list); returns its index. Raises ConsoleTimeout/ConsoleClosed."""
        patterns: list[Any] = list(pattern) if isinstance(pattern, list | tuple) else [pattern]
        compiled: list[Any] = [re.compile(p.encode()) if isinstance(p, str) else p for p in patterns]
        wait = self.default_timeout if timeout is None else timeout
        if isinstance(self.spawn, GuestSocketSpawn) and all(isinstance(p, re.Pattern) for p in compiled):
            return self._expect_socket(compiled, wait, patterns)
        try:
            index: int = self.spawn.expect(compiled, timeout=wait)
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(self._explain("timed out", patterns, timeout)) from None
        except pexpect.EOF:
            raise ConsoleClosed(self._explain("console closed", patterns, timeout)) from None
        return index

    def _expect_socket(self, compiled: list[re.Pattern[bytes]], timeout: float, shown: list[Any]) -> int:
        """pexpect's expect() for regexes on a socket, minus its per-read overhead.

        The command round trip is the harness's hot path (a shell `true` takes about 1 ms under
        TCG), and pexpect's generic loop costs about as much again. Same semantics: the earliest
        match wins, and `before`, `match`, `after` and `buffer` are left as pexpect leaves them.
        """
        spawn = self.spawn
        buffer = bytes(spawn.buffer or b"")
        deadline = time.monotonic() + timeout
        while True:
            best: tuple[int, int, re.Match[bytes]] | None = None
            for index, regex in enumerate(compiled):
                found = regex.search(buffer)
                if found and (best is None or found.start() < best[2].start()):
                    best = (index, found.start(), found)
            if best is not None:
                index, _, found = best
                spawn.before, spawn.after, spawn.match = buffer[: found.start()], found.group(0), found
                spawn.buffer = buffer[found.end():]
                return index
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise pexpect.TIMEOUT("deadline passed")
                buffer += spawn.read_nonblocking(65536, timeout=remaining)
            except pexpect.TIMEOUT:
                spawn.buffer = buffer
                raise ConsoleTimeout(self._explain("timed out", shown, timeout)) from None
            except pexpect.EOF:
                spawn.buffer = buffer
                raise ConsoleClosed(self._explain("console closed", shown, timeout)) from None

    def expect_exact(self, text: str | bytes, timeout: float | None = None) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.expect(re.compile(re.escape(data)), timeout)

    def _explain(self, what: str, patterns: list[Any], timeout: float | None) -> str:
        shown = " or ".join(repr(getattr(p, "pattern", p)) for p in patterns)
        message = f"{what} after {timeout or self.default_timeout:.0f}s waiting for {shown} on {self.name}"
        if what == "console closed" and isinstance(self.spawn, GuestSocketSpawn):
            message += (f" (the owner closed this {self.spawn.mode} console: taken over, or the guest stopped; "
                        f"the serial log keeps every byte: Console.for_machine(machine, "
                        f"from_offset={self.spawn.offset}) reads on from here)")
        if self.machine is not None:
            try:
                self.machine.check_alive()
            except SerconError as exc:
                return f"{message}: {exc}"
        return f"{message}; last console lines:\n{self.tail.lines()}"

    @property
    def before(self) -> bytes:
        return bytes(self.spawn.before or b"")

    @property
    def match(self) -> re.Match[bytes]:
        match = self.spawn.match
        if not isinstance(match, re.Match):
            raise SerconError("no regular-expression match yet")
        return match

    # ------------------------------------------------------------------ sending

    def send(self, data: str | bytes) -> None:
        self.spawn.send(data.encode() if isinstance(data, str) else data)

    def sendline(self, line: str = "") -> None:
        """Send a line ended by a bare CR, as a terminal's Enter key does."""
        self.send(line + "\r")

    def send_break(self) -> None:
        """A BREAK on the line: through QMP for a sercon guest, through pyserial otherwise."""
        if self.machine is not None:
            self.machine.send_break()
        elif self._port is not None:
            self._port.send_break(0.25)
        else:
            raise SerconError("this console cannot send a BREAK")

    def sysrq(self, keys: str) -> None:
        """SysRq on any console: the guest owner's action, or BREAK + key over pyserial."""
        if self.machine is not None:
            self.machine.sysrq(keys)
            return
        from emulator.sysrq import parse_keys

        for key in parse_keys(keys):
            self.send_break()
            self.send(key)
            time.sleep(0.1)

    def drain(self, quiet: float = 0.2, limit: float = 5.0) -> bytes:
        """Read whatever arrives until the line has been quiet for `quiet` seconds."""
        got = b""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                got += self.spawn.read_nonblocking(65536, timeout=quiet)
            except pexpect.TIMEOUT:
                break
            except pexpect.EOF:
                break
        return got

    def read(self, timeout: float) -> bytes:
        """What arrives within `timeout` seconds (b"" if nothing): bytes not yet matched come first."""
        pending = bytes(self.spawn.buffer or b"")
        if pending:
            self.spawn.buffer = b""
            return pending
        try:
            return bytes(self.spawn.read_nonblocking(65536, timeout=max(0.0, timeout)))
        except pexpect.TIMEOUT:
            return b""
        except pexpect.EOF:
            raise ConsoleClosed(f"the console stream of {self.name} ended") from None

    def discard_buffered(self) -> bytes:
        """Forget bytes received but not yet matched (they stay in the serial log); returns them."""
        pending = bytes(self.spawn.buffer or b"")
        self.spawn.buffer = b""
        if isinstance(self.spawn, GuestSocketSpawn):  # the hot path before every run(): no select
            try:
                while more := self.spawn.read_ready():
                    pending += more
            except pexpect.EOF:
                pass
            return pending
        while True:  # and whatever already waits in the socket, without waiting for more
            try:
                pending += self.spawn.read_nonblocking(65536, timeout=0)
            except (pexpect.TIMEOUT, pexpect.EOF):
                return pending

    def close(self) -> None:
        try:
            self.spawn.close()
        except (OSError, pexpect.ExceptionPexpect):
            pass

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
