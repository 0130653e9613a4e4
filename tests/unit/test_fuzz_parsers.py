"""Property-based fuzzing (hypothesis) of every parser that takes outside input: the Ctrl+] menu,
the SSH `~` escapes, the owner protocol (console handshake, frames, control-socket lines), fleet
files, RFC 2217 option bytes and the SAC driver's parsers. None may crash; bad input gets a
SerconError with a message, and well-formed input keeps its meaning."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emulator.errors import SerconError
from emulator.escape import ESCAPE, Command, Data, EscapeParser, Unknown
from emulator.gateway.fleet import FleetError, load_fleet
from emulator.protocol import FrameDecoder, encode_data, encode_event, parse_hello
from emulator.rfc2217 import PortManager, _PortAdapter
from emulator.ssh_escape import Help, Quit, Send, SshEscapeParser, SysRq
from harness import sac

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
chunks = st.lists(st.binary(max_size=64), max_size=12)


@FUZZ
@given(chunks)
def test_ctrl_bracket_menu_never_loses_a_byte(pieces: list[bytes]) -> None:
    parser = EscapeParser()
    actions = [a for piece in pieces for a in parser.feed(piece)]
    sent = b"".join(a.data for a in actions if isinstance(a, Data))
    # Every byte that is not part of an escape reaches the guest, in order.
    stream = b"".join(pieces)
    expected, i = bytearray(), 0
    while i < len(stream):
        if stream[i] == ESCAPE and i + 1 < len(stream):
            if stream[i + 1] == ESCAPE:
                expected.append(ESCAPE)
            i += 2
            continue
        if stream[i] != ESCAPE:
            expected.append(stream[i])
        i += 1
    assert sent == bytes(expected)
    assert all(isinstance(a, Data | Command | Unknown) for a in actions)


@FUZZ
@given(chunks, st.lists(st.booleans(), max_size=12))
def test_ssh_escapes_never_crash(pieces: list[bytes], breaks: list[bool]) -> None:
    parser = SshEscapeParser()
    for piece, brk in zip(pieces, breaks + [False] * len(pieces), strict=False):
        if brk:
            parser.brk()
        for action in parser.feed(piece):
            assert isinstance(action, Send | SysRq | Help | Quit)
            if isinstance(action, SysRq):
                assert len(action.key) == 1
            if isinstance(action, Send):
                assert action.data


@FUZZ
@given(st.binary(max_size=300))
def test_console_handshake_rejects_garbage_clearly(line: bytes) -> None:
    try:
        parse_hello(line)
    except SerconError as exc:
        assert str(exc).startswith("bad handshake")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=10)


@FUZZ
@given(st.dictionaries(st.sampled_from(["mode", "client", "from_offset", "notices", "events", "replay_max", "x"]),
                       json_values, max_size=7))
def test_console_handshake_objects(hello: dict[str, Any]) -> None:
    try:
        parsed = parse_hello(json.dumps(hello).encode())
    except SerconError as exc:
        assert str(exc).startswith("bad handshake")
        return
    assert parsed.mode in ("read", "interactive", "harness")
    assert parsed.from_offset is None or isinstance(parsed.from_offset, int)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=100).map(encode_data),
                          st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
                          .map(lambda d: encode_event({"type": "notice", **d}))), max_size=8),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=5))
def test_frames_survive_any_split(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    decoder = FrameDecoder()
    got, last = [], 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        got += decoder.feed(stream[last:cut])
        last = cut
    assert len(got) == len(frames)


@FUZZ
@given(st.binary(max_size=200))
def test_frame_decoder_rejects_garbage_clearly(stream: bytes) -> None:
    try:
        FrameDecoder().feed(stream)
    except SerconError as exc:
        assert "console" in str(exc)


toml_scalars = st.one_of(st.booleans(), st.integers(min_value=-10**6, max_value=10**6),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
fleet_keys = ["host", "port", "ssh_port", "console_enabled", "idle_timeout", "cert", "key", "audit_log", "nope"]
vm_keys = ["image", "policy", "console", "rfc2217", "memory_mb", "roles", "instances", "cpus"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(fleet_keys), toml_scalars, max_size=5),
       st.dictionaries(st.sampled_from(vm_keys), toml_scalars | st.dictionaries(st.text(max_size=5),
                                                                               st.text(max_size=8), max_size=2),
                       max_size=5))
def test_fleet_files_load_or_name_the_problem(tmp_path: Path, serve: dict[str, Any], vm: dict[str, Any]) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(tomlkit.dumps({"serve": serve, "vms": {"a": vm}}))
    try:
        fleet = load_fleet(path)
    except FleetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    # Loaded: every switch is a real boolean (a quoted "false" is never taken as true).
    assert isinstance(fleet.console_enabled, bool) and isinstance(fleet.vms["a"].console, bool)
    assert isinstance(fleet.vms["a"].rfc2217, bool)
    if "console_enabled" in serve:
        assert fleet.console_enabled is serve["console_enabled"]


@FUZZ
@given(st.text(max_size=400))
def test_fleet_text_never_crashes(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.toml"
        path.write_text(text)
        try:
            load_fleet(path)
        except FleetError:
            pass


class _Owner:
    """Records what the RFC 2217 port would put in the event log."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    async def send_break(self) -> None:
        pass


class _Wire:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


@FUZZ
@given(chunks)
@example(pieces=[b"\xff\xf0"])  # IAC SE with no SB: pyserial's own PortManager raised TypeError
def test_rfc2217_option_bytes_never_crash(pieces: list[bytes]) -> None:
    async def go() -> bytes:
        owner = _Owner()
        manager = PortManager(_PortAdapter(owner, "127.0.0.1:1"), _Wire())  # type: ignore[arg-type]
        payload = b"".join(b"".join(manager.filter(piece)) for piece in pieces)
        await asyncio.sleep(0)
        for event in owner.events:
            assert event["event"] in ("rfc2217_line", "break")
        return payload

    payload = asyncio.run(go())
    # Plain data (no IAC at all) passes through untouched.
    if b"\xff" not in b"".join(pieces):
        assert payload == b"".join(pieces)


@FUZZ
@given(st.text(max_size=600))
def test_sac_parsers_never_crash(text: str) -> None:
    sac.parse_channel_list(text)
    sac.parse_events(text)
    sac.parse_error(text)
    sac.unwrap(text)
    sac.parse_switch_screen(text)
    sac.parse_key_values(text)
    sac.parse_machine_info(text)
    sac.parse_bugcheck(text)
    screen = sac.ScreenText()
    screen.feed(text)
    assert isinstance(screen.text, str)
