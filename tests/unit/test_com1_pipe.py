"""COM1's FIFOs (emulator.local_qemu.Com1), with this test in QEMU's place: it opens `com1.in` and
`com1.out` as QEMU's `pipe` chardev does (read-write). The guest-side checks, with a real QEMU,
are in tests/linux/test_console_path.py."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from emulator.errors import GuestNotRunning
from emulator.local_qemu import Com1


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
