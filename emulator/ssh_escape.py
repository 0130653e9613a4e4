"""The SSH front end's `~` escapes, as OpenSSH (and AWS's serial console) has them, at the start of a line:

    ~B then a key   SysRq (a BREAK then the key); a BREAK request from the client works the same
    ~.              disconnect
    ~?              list the escapes
    ~~              send one ~

`SshEscapeParser.feed(chunk)` turns keyboard input into what to do, keeping its state across
reads (`~` may end one read and its key start the next). Pure, so it is tested on its own; the
`sercon attach` menu (Ctrl+]) is its sibling in `emulator.escape`.
"""

from __future__ import annotations

from dataclasses import dataclass

HELP = (
    "\r\nSupported escape sequences (at the start of a line):\r\n"
    " ~B  then a key: send SysRq (for example ~B h for help); one ~B per key\r\n"
    " ~.  disconnect\r\n"
    " ~?  this help\r\n"
    " ~~  send a single ~\r\n"
)


@dataclass(frozen=True)
class Send:
    """Bytes for the guest."""

    data: bytes


@dataclass(frozen=True)
class SysRq:
    key: str


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Quit:
    pass


Action = Send | SysRq | Help | Quit


class SshEscapeParser:
    def __init__(self) -> None:
        self.at_line_start = True
        self.pending_tilde = False
        self.pending_break = False

    def brk(self) -> None:
        """The client sent a BREAK (OpenSSH's own ~B): the next key is a SysRq key."""
        self.pending_break = True

    def feed(self, chunk: bytes) -> list[Action]:
        actions: list[Action] = []
        send = bytearray()

        def flush() -> None:
            if send:
                actions.append(Send(bytes(send)))
                send.clear()

        for byte in chunk:
            ch = bytes([byte])
            if self.pending_break:
                self.pending_break = False
                flush()
                actions.append(SysRq(ch.decode("latin-1")))
                continue
            if self.pending_tilde:
                self.pending_tilde = False
                if ch in (b"B", b"b"):
                    self.pending_break = True
                elif ch == b".":
                    flush()
                    actions.append(Quit())
                    return actions
                elif ch == b"?":
                    flush()
                    actions.append(Help())
                elif ch == b"~":
                    send += b"~"
                    self.at_line_start = False
                else:
                    send += b"~" + ch
                    self.at_line_start = ch in (b"\r", b"\n")
                continue
            if ch == b"~" and self.at_line_start:
                self.pending_tilde = True
                continue
            send += ch
            self.at_line_start = ch in (b"\r", b"\n")
        flush()
        return actions

    def reset(self) -> None:
        """A new console session starts at the start of a line, with nothing pending."""
        self.at_line_start, self.pending_tilde, self.pending_break = True, False, False
