"""The gateway's and the owner protocol's pure pieces: frames, handshake, SSH escapes, audit log
rotation and throttling, the login limiter, and where a console's end reason comes from."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from emulator.errors import ConsoleBusy, ControlError, SerconError
from emulator.gateway.audit import AuditLog
from emulator.gateway.auth import RateLimiter
from emulator.gateway.fleet import Vm
from emulator.gateway.fleet_host import COALESCE_S, COALESCE_VIEWER_S, ConsoleConnection, console_pacer
from emulator.protocol import FrameDecoder, decode_reply, encode_data, encode_event, make_hello, parse_hello
from emulator.ssh_escape import Help, Quit, Send, SshEscapeParser, SysRq
from emulator.trust import scrub_label

TAKEOVER_TEXT = (b"\r\n[sercon] The serial console connection was closed: mallory took over the console. "
                 b"Your session in the guest continues. To reconnect, press Enter.\r\n")


def test_frames_round_trip_in_any_pieces() -> None:
    closed = {"type": "closed", "reason": "takeover", "by": "x"}
    stream = encode_data(b"hello") + encode_event(closed) + encode_data(b"")
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [f.kind for f in frames] == ["data", "event", "data"]
        assert frames[0].data == b"hello" and frames[1].event == {"type": "closed", "reason": "takeover", "by": "x"}


def test_bad_frames_are_one_clear_error() -> None:
    with pytest.raises(ControlError, match="out of step"):
        FrameDecoder().feed(b"X\x00\x00\x00\x01a")
    with pytest.raises(ControlError, match="over the"):
        FrameDecoder().feed(b"D\xff\xff\xff\xff")
    with pytest.raises(ControlError, match="not JSON"):
        FrameDecoder().feed(b"E\x00\x00\x00\x01{")


def _conn(stream: bytes) -> ConsoleConnection:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    vm = Vm(name="v", guest_name="v", image="i", overrides={}, roles={})
    return ConsoleConnection(vm=vm, reader=reader, writer=None, mode="interactive",  # type: ignore[arg-type]
                             label="l", start=0, took_over=None)


async def _drain(stream: bytes) -> tuple[bytes, str]:
    conn = _conn(stream)
    data = b"".join([data async for data in conn.output()])
    return data, conn.reason


def test_a_guest_cannot_fake_a_takeover() -> None:
    """The guest printing the takeover sentence is guest output; only the owner's event ends a session
    as a takeover. Before: the gateway searched the last 512 bytes of output for the sentence."""
    assert asyncio.run(_drain(encode_data(TAKEOVER_TEXT))) == (TAKEOVER_TEXT, "guest")
    real = encode_data(b"output") + encode_event({"type": "closed", "reason": "takeover", "by": "m"})
    assert asyncio.run(_drain(real)) == (b"output", "takeover")


def test_handshake_is_checked() -> None:
    hello = parse_hello(make_hello("read", "me", from_offset=-10, events=True, replay_max=5))
    assert (hello.mode, hello.from_offset, hello.events, hello.replay_max) == ("read", -10, True, 5)
    for bad, message in ((b"nope", "not JSON"), (b'{"mode": "admin"}', "needs a mode"),
                         (b'{"mode": "read", "from_offset": "0"}', "from_offset must be a whole number"),
                         (b'{"mode": "read", "from_offset": true}', "from_offset must be a whole number"),
                         (b'{"mode": "read", "events": 1}', "events must be true or false"),
                         (b'{"mode": "read", "replay_max": -1}', "replay_max must be 0 or more")):
        with pytest.raises(ControlError, match=message):
            parse_hello(bad)


def test_one_error_decoder() -> None:
    assert decode_reply({"ok": True, "result": 5}, "x") == 5
    with pytest.raises(ConsoleBusy, match="in use"):
        decode_reply({"ok": False, "error": {"type": "ConsoleBusy", "message": "in use"}}, "x")
    with pytest.raises(SerconError, match="refused x"):
        decode_reply({"ok": False, "error": {"type": "NoSuchClass"}}, "x")
    with pytest.raises(ControlError, match="not a JSON object"):
        decode_reply([1], "x")


def test_ssh_escapes() -> None:
    p = SshEscapeParser()
    assert p.feed(b"ls\r~Bh") == [Send(b"ls\r"), SysRq("h")]
    assert p.feed(b"~?") == [Help()]
    assert p.feed(b"a~b\r") == [Send(b"a~b\r")]
    assert p.feed(b"~~x\r") == [Send(b"~x\r")]
    assert p.feed(b"~") == [] and p.feed(b".") == [Quit()]
    p.reset()
    p.brk()
    assert p.feed(b"s") == [SysRq("s")]
    assert p.feed(b"~z") == [Send(b"~z")]  # an unknown escape is sent as typed


def test_labels_are_scrubbed() -> None:
    assert scrub_label("\x1b]0;t\x07ok") == "?]0;t?ok"
    assert scrub_label("x" * 500) == "x" * 80
    assert scrub_label("") == "anonymous"


def test_audit_log_rotates_and_throttles_refusals(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=2000, keep=2, throttle_s=60)
    for _ in range(100):
        audit.write("login_rate_limited", user="m", source="10.0.0.1:5")
    assert len(AuditLog.read(audit.path)) == 3  # a burst of 3, then 97 left out for now
    for i in range(100):
        audit.write("login_ok", user=f"u{i}", source="10.0.0.1:5")
    audit.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 2200 for p in tmp_path.iterdir())
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())


def test_audit_throttle_reports_how_many_were_left_out(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", throttle_s=0.2)
    for _ in range(5):
        audit.write("denied", user="m", source="1.2.3.4:1", vm="v")
    import time

    time.sleep(0.25)
    audit.write("denied", user="m", source="1.2.3.4:9", vm="v")
    audit.close()
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[3]["repeated"] == 2


def test_limiter_counts_attempts_before_they_finish() -> None:
    limiter = RateLimiter(pair_limit=3, address_limit=100, window=60)
    started = [limiter.begin("1.1.1.1", "u") for _ in range(10)]
    assert started[:3] == [None, None, None] and all(w is not None and w > 0 for w in started[3:])
    assert limiter.begin("2.2.2.2", "u") is None  # other addresses are not locked out
    limiter.succeeded("1.1.1.1", "u")
    assert limiter.begin("1.1.1.1", "u") is None


class _Inputs:
    """An input source fed by the test: a queue of item lists."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def next(self) -> list[Any]:
        return await self.queue.get()


class _Host:
    def __init__(self, idle: float) -> None:
        self.fleet = type("F", (), {"idle_timeout": idle})()


async def _bridge(idle: float, feed: list[list[Any]], expires_in: float | None = None,
                  gap: float = 0.05) -> str:
    from emulator.gateway.bridge import run_bridge

    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    conn = _conn(b"")
    conn.reader, conn.writer = reader, writer  # an owner that never says anything
    inputs = _Inputs()

    async def typing() -> None:
        for items in feed:
            await asyncio.sleep(gap)
            inputs.queue.put_nowait(items)

    task = asyncio.create_task(typing())

    async def show(data: bytes) -> None:
        pass

    expires_at = None if expires_in is None else time.time() + expires_in
    try:
        reason, _ = await asyncio.wait_for(
            run_bridge(_Host(idle), conn, inputs, show=show, tell=show, source="s", via="t",  # type: ignore[arg-type]
                       expires_at=expires_at), 20)
    finally:
        task.cancel()
        writer.close()
        theirs.close()
    return reason


def test_bridge_keepalives_are_not_input_and_sessions_expire() -> None:
    """The shared bridge (web and SSH): keepalives do not hold off the idle timeout, keystrokes do,
    and a session that expires ends its console."""
    from emulator.gateway.bridge import End, Keepalive, ToGuest

    assert asyncio.run(_bridge(0.5, [[Keepalive()]] * 30 + [[End("quit")]])) == "idle"
    assert asyncio.run(_bridge(5, [[ToGuest(b"x")]] * 12 + [[End("quit")]])) == "quit"
    assert asyncio.run(_bridge(60, [[ToGuest(b"x")]] * 100, expires_in=0.3)) == "expired"


def test_bridge_ends_with_the_owners_side_and_still_yields_to_an_outside_cancel() -> None:
    """The bridge waits on the front end's input itself and ends by cancelling that wait: when the
    owner's side closes (here: the owner's "closed" event, a takeover) it returns the owner's reason
    and leaves input it did not take in the queue; a cancel from outside (sercon serve stopping)
    still cancels it. Seen to fail with the bridge taking every cancel for its own (the outside
    cancel did not come out) and with the pump's end not cancelling the wait (a timeout)."""
    from emulator.gateway.bridge import ToGuest, run_bridge

    async def show(data: bytes) -> None:
        pass

    async def go() -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        conn = _conn(b"")
        conn.reader, conn.writer = reader, writer
        inputs = _Inputs()
        bridge = asyncio.create_task(run_bridge(_Host(60), conn, inputs, show=show, tell=show,  # type: ignore[arg-type]
                                                source="s", via="t"))
        await asyncio.sleep(0.1)
        theirs.sendall(encode_event({"type": "closed", "reason": "takeover"}))
        theirs.close()
        reason, _ = await asyncio.wait_for(bridge, 10)
        assert reason == "takeover"
        inputs.queue.put_nowait([ToGuest(b"typed after")])
        assert inputs.queue.qsize() == 1  # no reader left behind to take it
        writer.close()

        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        conn.reader, conn.writer = reader, writer
        bridge = asyncio.create_task(run_bridge(_Host(60), conn, _Inputs(), show=show, tell=show,  # type: ignore[arg-type]
                                                source="s", via="t"))
        await asyncio.sleep(0.1)
        bridge.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(bridge, 10)
        writer.close()
        theirs.close()

    asyncio.run(go())


def test_console_pacer_never_holds_a_typists_echoes_and_gathers_a_burst() -> None:
    """The gateway's pacing of one user's output: echoes of fast typing (a byte every 30 ms, and
    a paste echoed a byte every millisecond for 5 s) always go out at once; a read of kilobytes
    holds the next read for COALESCE_S, or COALESCE_VIEWER_S for a read-only viewer. With a rule
    that counted only bytes (no rate), the paste's 64th echo was held."""
    for gap in (0.03, 0.001):
        pacer = console_pacer("interactive")
        assert all(pacer.after_read(1, 100 + i * gap) == 0 for i in range(5000))
    assert console_pacer("interactive").after_read(4096, 1.0) == COALESCE_S
    assert console_pacer("read").after_read(4096, 1.0) == COALESCE_VIEWER_S
    assert console_pacer("interactive").after_read(60, 1.0) == 0  # a short answer: at once
