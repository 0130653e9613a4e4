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
import pexpect.fdpexpect
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


class Console:
    """Expect-style access to one serial console."""

    def __init__(
        self, spawn: pexpect.fdpexpect.fdspawn[bytes] | SerialSpawn, *, name: str, tail: _Tail,
        machine: Machine | None = None, sock: socket.socket | None = None, port: Any = None, start_offset: int = 0,
    ) -> None:
        self.spawn = spawn
        self.name = name
        self.tail = tail
        self.machine = machine
        self._sock = sock
        self._port = port
        #: Serial log offset of the first byte this console received.
        self.start_offset = start_offset
        self.default_timeout = 30.0

    @classmethod
    def for_machine(cls, machine: Machine, *, mode: str = "harness", from_offset: int | None = 0,
                    client: str = "harness") -> Console:
        sock, reply = machine.open_console(mode, client=client, from_offset=from_offset)
        tail = _Tail()
        spawn: pexpect.fdpexpect.fdspawn[bytes] = pexpect.fdpexpect.fdspawn(
            sock.fileno(), timeout=30, maxread=65536, encoding=None
        )
        spawn.logfile_read = tail
        start = from_offset if from_offset is not None and from_offset >= 0 else int(reply["offset"])
        return cls(spawn, name=machine.name or "guest", tail=tail, machine=machine, sock=sock, start_offset=start)

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
        if self._sock is not None and all(isinstance(p, re.Pattern) for p in compiled):
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
        fd = spawn.child_fd
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
            ready = select.select([fd], [], [], max(0.0, remaining))[0] if remaining > 0 else []
            if not ready:
                spawn.buffer = buffer
                raise ConsoleTimeout(self._explain("timed out", shown, timeout))
            data = os.read(fd, 65536)
            if not data:
                spawn.buffer = buffer
                raise ConsoleClosed(self._explain("console closed", shown, timeout))
            self.tail.write(data)
            buffer += data

    def expect_exact(self, text: str | bytes, timeout: float | None = None) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.expect(re.compile(re.escape(data)), timeout)

    def _explain(self, what: str, patterns: list[Any], timeout: float | None) -> str:
        shown = " or ".join(repr(getattr(p, "pattern", p)) for p in patterns)
        message = f"{what} after {timeout or self.default_timeout:.0f}s waiting for {shown} on {self.name}"
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
        if self._sock is not None:
            self._sock.detach()  # pexpect closed the file descriptor already

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
