"""The `sercon attach` escape menu: Ctrl+] then a key, as Azure's CLI console (and telnet) do.

`EscapeParser.feed(bytes)` splits keyboard input into bytes for the guest and menu commands,
keeping state across reads (Ctrl+] may end one read and its key start the next). Pure, so it is
unit-tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

ESCAPE = 0x1D  # Ctrl+]

#: Menu keys and what they do; Ctrl+] twice sends one 0x1D to the guest.
COMMANDS: dict[str, str] = {
    "s": "SysRq: asks for a key or a sequence such as reisub",
    "n": "NMI",
    "r": "reset (hard; the console stays connected)",
    "R": "restart (graceful, ACPI power button)",
    "p": "power cycle (new QEMU process)",
    "b": "send a BREAK",
    "l": "show the serial log path",
    "q": "detach (the guest keeps running)",
    "?": "this help",
}


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Command:
    key: str


@dataclass(frozen=True)
class Unknown:
    key: bytes


Action = Data | Command | Unknown


class EscapeParser:
    def __init__(self) -> None:
        self.pending_escape = False

    def feed(self, chunk: bytes) -> list[Action]:
        actions: list[Action] = []
        buf = bytearray()

        def flush() -> None:
            if buf:
                actions.append(Data(bytes(buf)))
                buf.clear()

        for byte in chunk:
            if self.pending_escape:
                self.pending_escape = False
                if byte == ESCAPE:
                    buf.append(ESCAPE)
                    continue
                flush()
                key = chr(byte)
                actions.append(Command(key) if key in COMMANDS else Unknown(bytes([byte])))
            elif byte == ESCAPE:
                self.pending_escape = True
            else:
                buf.append(byte)
        flush()
        return actions


def help_text() -> str:
    lines = ["sercon escape menu: Ctrl+] then"]
    lines += [f"  {key}  {what}" for key, what in COMMANDS.items()]
    lines.append("  Ctrl+]  send Ctrl+] (0x1D) to the guest")
    return "\r\n".join(lines) + "\r\n"
