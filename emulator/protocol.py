"""The owner protocol's pieces shared by every side: the console handshake, the framing of
session events, and the one error decoder.

Console socket (`console.sock`): the client sends one JSON line, the hello:
`{"mode": "read"|"interactive"|"harness", "client": "who", "from_offset": N|null,
"notices": bool, "events": bool, "replay_max": N|null}` and gets one JSON line back,
`{"ok": true, "offset": LIVE, "replay_from": START, "state": ...}` or `{"ok": false, "error": {...}}`.

Then, without `events`, the socket carries the guest's bytes as they are (what `sercon attach`,
the harness and a raw `socat` want). With `events` every message is a frame: one kind byte,
a 4-byte big-endian length, the payload. Kind `D` is guest output; kind `E` is a JSON session
event, `{"type": "closed", "reason": "takeover"|"stopped"|"dropped", "by": LABEL}` or
`{"type": "notice", "text": ...}`. The guest cannot forge an event: its bytes are only ever in
`D` frames.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import ERROR_CLASSES, ControlError, SerconError

MODES = ("read", "interactive", "harness")
DATA, EVENT = b"D", b"E"
HEADER = struct.Struct(">cI")
#: Largest frame a decoder accepts (the owner sends guest output in pieces of at most 64 KiB).
FRAME_MAX = 1024 * 1024
#: Session end reasons a console client may be told (closed events).
CLOSE_REASONS = ("takeover", "stopped", "dropped")


def encode_data(data: bytes) -> bytes:
    return HEADER.pack(DATA, len(data)) + data


def encode_event(event: dict[str, Any]) -> bytes:
    payload = json.dumps(event).encode()
    return HEADER.pack(EVENT, len(payload)) + payload


@dataclass(frozen=True)
class Frame:
    kind: str  # "data" or "event"
    data: bytes = b""
    event: dict[str, Any] | None = None


class FrameDecoder:
    """Splits a framed console stream into data and events; keeps partial frames across feeds.

    Pure: `feed(bytes)` returns the complete frames; a malformed stream raises ControlError."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if kind not in (DATA, EVENT):
                raise ControlError(f"console stream out of step: frame kind {kind!r} (expected D or E)")
            if length > FRAME_MAX:
                raise ControlError(f"console frame of {length} bytes is over the {FRAME_MAX}-byte limit")
            if len(self._buf) < HEADER.size + length:
                break
            payload = bytes(self._buf[HEADER.size:HEADER.size + length])
            del self._buf[:HEADER.size + length]
            if kind == DATA:
                frames.append(Frame("data", data=payload))
            else:
                try:
                    event = json.loads(payload)
                except ValueError as exc:
                    raise ControlError(f"console event is not JSON: {exc}") from exc
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise ControlError('a console event is a JSON object with a "type" string')
                frames.append(Frame("event", event=event))
        return frames


def make_hello(mode: str, client: str, *, from_offset: int | None = None, notices: bool = False,
               events: bool = False, replay_max: int | None = None) -> bytes:
    hello = {"mode": mode, "client": client, "from_offset": from_offset, "notices": notices, "events": events,
             "replay_max": replay_max}
    return json.dumps(hello).encode() + b"\n"


@dataclass(frozen=True)
class Hello:
    mode: str
    client: str
    from_offset: int | None
    notices: bool
    events: bool
    replay_max: int | None


def parse_hello(line: bytes) -> Hello:
    """The owner's side of the handshake: a checked Hello, or ControlError saying what is wrong."""
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"bad handshake: not JSON ({exc}); send one JSON line, e.g. "
                           '{"mode": "read", "client": "me"}') from exc
    if not isinstance(raw, dict) or raw.get("mode") not in MODES:
        raise ControlError(f"bad handshake: it needs a mode, one of {', '.join(MODES)}")

    def whole(key: str) -> int | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ControlError(f"bad handshake: {key} must be a whole number or null, not {value!r:.40}")
        return value

    for flag in ("notices", "events"):
        if not isinstance(raw.get(flag, False), bool):
            raise ControlError(f"bad handshake: {flag} must be true or false")
    replay_max = whole("replay_max")
    if replay_max is not None and replay_max < 0:
        raise ControlError("bad handshake: replay_max must be 0 or more")
    return Hello(mode=raw["mode"], client=str(raw.get("client", "anonymous"))[:200], from_offset=whole("from_offset"),
                 notices=bool(raw.get("notices", False)), events=bool(raw.get("events", False)),
                 replay_max=replay_max)


async def send_line(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """One JSON line to a peer that may already be gone (the owner's replies and refusals)."""
    writer.write(json.dumps(message).encode() + b"\n")
    try:
        await writer.drain()
    except ConnectionError:
        pass


def error_reply(exc: SerconError) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}


def decode_reply(reply: Any, what: str) -> Any:
    """The one decoder of owner replies: the result, or the owner's error re-raised as its own class."""
    if not isinstance(reply, dict):
        raise ControlError(f"the guest owner answered {what} with something that is not a JSON object")
    if reply.get("ok"):
        return reply.get("result", reply)
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    cls = ERROR_CLASSES.get(str(error.get("type", "")), SerconError)
    raise cls(str(error.get("message", f"the guest owner refused {what}")))
