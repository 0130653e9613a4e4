"""COM1's FIFOs (emulator.local_qemu.Com1), with this test in QEMU's place: it opens `com1.in` and
`com1.out` as QEMU's `pipe` chardev does (read-write). The guest-side checks, with a real QEMU,
are in tests/linux/test_console_path.py."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.errors import GuestNotRunning
from emulator.local_qemu import Com1, com1_pacer
from emulator.pacing import BurstPacer


def _as_qemu(com1: Com1) -> tuple[int, int]:
    """QEMU's ends: (reads the guest's input, writes the UART's output)."""
    return (os.open(f"{com1.path}.in", os.O_RDWR | os.O_NONBLOCK),
            os.open(f"{com1.path}.out", os.O_RDWR | os.O_NONBLOCK))


def _read_all(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return data
        data += chunk


def test_fifos_are_private_whatever_the_umask_and_gone_after_close(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        com1 = Com1(tmp_path, lambda data: None)
    finally:
        os.umask(old)
    for suffix in (".in", ".out"):
        mode = os.stat(f"{com1.path}{suffix}").st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o600
    com1.close()
    assert list(tmp_path.iterdir()) == []


def test_output_before_start_and_at_exit_reaches_the_owner_in_order(tmp_path: Path) -> None:
    got = bytearray()

    async def go() -> None:
        com1 = Com1(tmp_path, got.extend)
        qemu_in, qemu_out = _as_qemu(com1)
        for byte in b"early ":  # a byte at a time, as QEMU's UART writes, before anyone reads
            os.write(qemu_out, bytes([byte]))
        com1.start()
        await asyncio.sleep(0.05)
        os.write(qemu_out, b"reboot: Power down\r\n")
        com1.close()  # what the process watcher does when QEMU exits: nothing is left behind
        os.close(qemu_in)
        os.close(qemu_out)

    asyncio.run(go())
    assert bytes(got) == b"early reboot: Power down\r\n"


def test_input_larger_than_the_fifo_arrives_whole_and_in_order(tmp_path: Path) -> None:
    """Two writes of 3 MiB each (more than the FIFO holds) while the guest reads slowly: each
    write returns once its bytes are in, and the guest sees the first write, then the second."""
    first, second = b"a" * (3 << 20), b"b" * (3 << 20)

    async def go() -> bytes:
        com1 = Com1(tmp_path, lambda data: None)
        qemu_in, qemu_out = _as_qemu(com1)
        com1.start()
        writes = asyncio.gather(com1.write(first), com1.write(second))
        seen = b""
        while len(seen) < len(first) + len(second):
            await asyncio.sleep(0.001)
            seen += _read_all(qemu_in)
        await asyncio.wait_for(writes, 10)
        com1.close()
        os.close(qemu_in)
        os.close(qemu_out)
        return seen

    assert asyncio.run(go()) == first + second


def test_input_nobody_took_fails_its_writer_when_qemu_exits(tmp_path: Path) -> None:
    async def go() -> None:
        com1 = Com1(tmp_path, lambda data: None)
        com1.start()
        pending = asyncio.ensure_future(com1.write(b"x" * (4 << 20)))
        await asyncio.sleep(0.05)
        assert not pending.done()  # the FIFO is full and nobody reads it
        com1.close()
        with pytest.raises(GuestNotRunning):
            await pending
        with pytest.raises(GuestNotRunning):
            await com1.write(b"late")

    asyncio.run(go())


def test_a_burst_is_read_every_few_milliseconds_and_every_byte_arrives(tmp_path: Path) -> None:
    """A process in QEMU's place writes 256 KiB a byte at a time, as fast as it can. Past the
    first 4 KiB the owner leaves the FIFO unread for the pacer's hold between reads, so it wakes
    once per few KiB; every byte still arrives, in order. Unpaced (SERCON_SERIAL_PACE=0, or
    `Com1._read_ready` without its hold) the reads come microseconds apart and the gap check fails."""
    size = 256 * 1024
    reads: list[tuple[float, int]] = []
    got = bytearray()

    def on_data(data: bytes) -> None:
        reads.append((time.monotonic(), len(data)))
        got.extend(data)

    async def go() -> None:
        com1 = Com1(tmp_path, on_data)
        assert com1.pacer is not None
        com1.start()
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "for i in range(int(sys.argv[2])): os.write(fd, bytes([48 + i % 10]))",
            f"{com1.path}.out", str(size))
        assert await writer.wait() == 0
        while len(got) < size:
            await asyncio.sleep(0.01)
        com1.close()

    asyncio.run(go())
    assert bytes(got) == bytes(48 + i % 10 for i in range(size))
    hold = com1_pacer()
    assert hold is not None
    total, last = 0, None
    gaps = []
    for when, count in reads:
        if last is not None and total > hold.min_bytes and total > hold.min_rate * (when - reads[0][0]):
            gaps.append(when - last)
        total += count
        last = when
    assert gaps and min(gaps) >= hold.hold_s * 0.9  # call_later may fire a clock tick early


def test_pacer_reads_an_echo_at_once_and_holds_only_inside_a_burst() -> None:
    pacer = BurstPacer(gap_s=0.001, min_bytes=4096, min_rate=150_000, hold_s=0.005)
    assert pacer.after_read(1, 10.0) == 0  # a keystroke's echo
    assert pacer.after_read(4000, 10.0005) == 0  # a run, not yet past min_bytes
    assert pacer.after_read(200, 10.0008) == 0.005  # 4201 bytes in 0.8 ms: a burst
    pacer.resumed(10.006)
    assert pacer.after_read(3000, 10.006) == 0.005  # the read after the hold continues the run
    assert pacer.after_read(1, 10.1) == 0  # after a pause: a new run, read at once
    slow = BurstPacer(gap_s=0.01, min_bytes=100, min_rate=150_000, hold_s=0.005)
    for step in range(200):  # 50 bytes every 5 ms: 10 kB/s, a slow stream is never held
        assert slow.after_read(50, 20 + step * 0.005) == 0


@given(st.lists(st.tuples(st.integers(1, 1 << 16), st.floats(0, 1)), max_size=50), st.integers(1, 64))
def test_pacer_never_holds_the_first_read_of_a_run(history: list[tuple[int, float]], echo: int) -> None:
    """Whatever came before, a short read after a pause longer than gap_s is read at once: the
    pacer cannot delay a keystroke's echo."""
    pacer = BurstPacer(gap_s=0.001, min_bytes=4096, min_rate=150_000, hold_s=0.005)
    now = 0.0
    for size, gap in history:
        now += gap
        if pacer.after_read(size, now):
            now += pacer.hold_s
            pacer.resumed(now)
    assert pacer.after_read(echo, now + 0.002) == 0


def test_com1_pacing_survives_the_writer_pausing_a_few_milliseconds() -> None:
    """On a busy host QEMU's vCPU stops for a few ms in the middle of a burst. The run goes on:
    after the first 4 KiB every read is held. With a 1 ms gap (before) each pause began a new
    run, read a few bytes at a time again."""
    pacer = com1_pacer()
    assert pacer is not None
    now, held = 0.0, []
    for chunk in range(200):
        now += 0.004 if chunk % 3 else 0.0001  # a pause of 4 ms every third read
        hold = pacer.after_read(2048, now)
        held.append(hold)
        if hold:
            now += hold
            pacer.resumed(now)
    assert all(held[3:])
