"""SysRq key validation and the `sercon attach` escape-menu parser."""

from __future__ import annotations

import pytest

from emulator.errors import InvalidSysRqKey
from emulator.escape import Command, Data, EscapeParser, Unknown, help_text
from emulator.sysrq import SYSRQ_KEYS, parse_keys


def test_single_keys_and_sequences() -> None:
    assert parse_keys("h") == ["h"]
    assert parse_keys("REISUB") == ["r", "e", "i", "s", "u", "b"]
    assert parse_keys("r e, i") == ["r", "e", "i"]
    assert parse_keys("7") == ["7"]


@pytest.mark.parametrize("bad", ["x", "h!", "é", "a"])
def test_invalid_keys_list_the_valid_ones(bad: str) -> None:
    with pytest.raises(InvalidSysRqKey) as caught:
        parse_keys(bad)
    assert "valid keys are" in str(caught.value) and "0-9" in str(caught.value)


def test_empty_is_invalid() -> None:
    with pytest.raises(InvalidSysRqKey, match="no SysRq key given"):
        parse_keys("  ")


def test_every_documented_key_is_a_single_character() -> None:
    assert all(len(k) == 1 for k in SYSRQ_KEYS) and "h" in SYSRQ_KEYS and "x" not in SYSRQ_KEYS


def test_escape_parser_splits_data_and_commands() -> None:
    parser = EscapeParser()
    assert parser.feed(b"ls\r") == [Data(b"ls\r")]
    assert parser.feed(b"ab\x1dsc") == [Data(b"ab"), Command("s"), Data(b"c")]
    assert parser.feed(b"\x1d\x1d") == [Data(b"\x1d")]  # Ctrl+] twice sends one 0x1D
    assert parser.feed(b"\x1dZ") == [Unknown(b"Z")]


def test_escape_survives_a_read_boundary() -> None:
    parser = EscapeParser()
    assert parser.feed(b"x\x1d") == [Data(b"x")]
    assert parser.feed(b"q") == [Command("q")]
    assert parser.feed(b"\x1d") == []
    assert parser.feed(b"\x1dy") == [Data(b"\x1dy")]


def test_help_lists_every_command() -> None:
    text = help_text()
    for key in "snrRpblq?":
        assert f"  {key}  " in text



def test_kernel_timestamps_split_across_many_reads_are_tracked() -> None:
    from harness.linux import KernelClock

    clock = KernelClock()
    for byte in b"before\r\n[    2.832408] kmsg\r\n[  1.000000] older\r\n":
        clock.feed(bytes([byte]))
    assert clock.latest == 2.832408
