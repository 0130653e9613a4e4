"""The SAC driver's parsers and its line renderer (harness/sac.py), on text as SAC prints it."""

from __future__ import annotations

from harness.sac import (
    Bugcheck,
    ChannelInfo,
    SacChannel,
    SacEvent,
    ScreenText,
    event_pattern,
    parse_bugcheck,
    parse_channel_list,
    parse_error,
    parse_events,
    parse_key_values,
    parse_machine_info,
    parse_switch_screen,
    status_pattern,
    unwrap,
)

# Each fixture is SAC's text as a public document shows it (title and section), so a change of
# parser is checked against Microsoft's behaviour, not against sercon's own simulator:
# - CH_LISTING: "Special Administration Console (SAC) and SAC commands" (Windows Server 2003
#   Technical Reference, "SAC commands": `ch`);
# - SWITCH_SCREEN: the same, Esc Tab / `ch -si`, with the CMD application GUID of "Headless Server
#   and EMS Design" ("EMS XML output", <channel-switch>);
# - BLUESCREEN: "Headless Server and EMS Design" (<BP> BLUESCREEN instance, <machine-info>) and
#   "Bug Check 0x80: NMI_HARDWARE_FAILURE" (Bug Check Code Reference) for the stop line;
# - the events: "SAC commands" (cmd) and "Azure Serial Console for Windows" ("Use CMD or
#   PowerShell in Serial Console").
CH_LISTING = """Channel List

(Use "ch -?" for information on using channels)

# Status  Channel Name
0 (AV)    SAC
1 (AV)    Cmd0001
2 (IV)    Cmd0002
"""

SWITCH_SCREEN = """Name:                  Cmd0001
Description:           Command Prompt
Type:                  VT-UTF8
Channel GUID:          5ac5111a-0001-4c00-8000-00006b07c095
Application Type GUID: 63d02271-8aa4-11d5-bccf-00b0d014a2d0

Press <esc><tab> for next channel.
Press <esc><tab>0 to return to the SAC channel.
"""

BLUESCREEN = """<?xml version="1.0"?>
<BP>
<INSTANCE CLASSNAME="BLUESCREEN">
<PROPERTY NAME="STOPCODE" TYPE="string"><VALUE>"0x80"</VALUE></PROPERTY><machine-info>
<name>WIN-HOST</name>
<guid>00000000-0000-0000-0000-000000000000</guid>
<processor-architecture>AMD64</processor-architecture>
<os-version>10.0</os-version>
<os-build-number>17763</os-build-number>
<os-product>Windows Server 2019 Datacenter</os-product>
<os-service-pack>None</os-service-pack>
</machine-info>
</INSTANCE>
</BP>
!SAC>

*** STOP: 0x00000080 (0x004F4454,0x00000000,0x00000000,0x00000000)
NMI_HARDWARE_FAILURE
"""


def test_channel_list() -> None:
    rows = parse_channel_list(CH_LISTING)
    assert rows == [SacChannel(0, "AV", "SAC"), SacChannel(1, "AV", "Cmd0001"), SacChannel(2, "IV", "Cmd0002")]
    assert rows[1].active and not rows[2].active


def test_events_with_and_without_channel() -> None:
    text = ('SAC>\nEVENT: The CMD command is now available.\nSAC>cmd\n'
            'EVENT:   A new channel has been created.  Use "ch -?" for channel help.\nChannel: Cmd0001\nSAC>')
    assert parse_events(text) == [
        SacEvent("The CMD command is now available."),
        SacEvent('A new channel has been created.  Use "ch -?" for channel help.', "Cmd0001"),
    ]


def test_an_event_arriving_in_pieces_matches_only_when_whole() -> None:
    """The serial line delivers an event a few bytes at a time; every prefix of it must not match."""
    whole = 'EVENT:   A new channel has been created.  Use "ch -?" for channel help.\nChannel: Cmd0012\nSAC>'
    pattern = event_pattern("A new channel")
    complete_at = whole.index("Cmd0012") + len("Cmd0012\n")
    for end in range(len(whole) + 1):
        match = pattern.search(whole[:end])
        if end < complete_at:
            assert match is None, f"matched the incomplete {whole[:end]!r}"
        else:
            assert match is not None and match["channel"] == "Cmd0012"
    plain = "EVENT: The CMD command is now available.\nSAC>"
    assert event_pattern().search(plain[:plain.index("\n") + 1]) is None  # a Channel: line could follow
    found = event_pattern().search(plain)
    assert found is not None and found["channel"] is None and found["text"] == "The CMD command is now available."


def test_errors_keep_sacs_text_and_unwrap_80_columns() -> None:
    assert parse_error("Unrecognized command.  Try the 'help' command for more details.\n") == (
        "Unrecognized command.  Try the 'help' command for more details.")
    wrapped = ("Unable to launch a Command Prompt.  The service responsible for launching Comman\n"
               "d Prompt channels has not yet registered.\n\nSAC>")
    assert parse_error(wrapped) == ("Unable to launch a Command Prompt.  The service responsible for launching "
                                    "Command Prompt channels has not yet registered.")
    assert parse_error("Error: There is no channel present at the specified index.") is not None
    assert parse_error("Computer Name: X\nBuild Number: 17763") is None
    assert unwrap("short\nlines") == "short lines"


def test_switch_screen_and_key_values() -> None:
    assert parse_switch_screen(SWITCH_SCREEN) == ChannelInfo(
        "Cmd0001", "Command Prompt", "VT-UTF8", "5ac5111a-0001-4c00-8000-00006b07c095",
        "63d02271-8aa4-11d5-bccf-00b0d014a2d0")
    assert parse_switch_screen("nothing here") is None
    ids = parse_key_values("Computer Name: WIN-1\nProduct: Windows Server 2019\n<name>x</name>\n")
    assert ids == {"Computer Name": "WIN-1", "Product": "Windows Server 2019"}


def test_machine_info() -> None:
    info = parse_machine_info(BLUESCREEN)
    assert info["name"] == "WIN-HOST" and info["os-build-number"] == "17763"
    assert parse_machine_info("no xml") == {}


def test_bugcheck_from_xml_and_stop_line() -> None:
    bugcheck = parse_bugcheck(BLUESCREEN)
    assert bugcheck == Bugcheck(0x80, "NMI_HARDWARE_FAILURE", (0x4F4454, 0, 0, 0))
    assert str(bugcheck).startswith("bugcheck 0x80 NMI_HARDWARE_FAILURE")
    only_xml = BLUESCREEN.split("!SAC>")[0]
    assert parse_bugcheck(only_xml) == Bugcheck(0x80, "NMI_HARDWARE_FAILURE", ())
    assert parse_bugcheck("Stop code: MANUALLY_INITIATED_CRASH\n") == Bugcheck(0xE2, "MANUALLY_INITIATED_CRASH")
    assert parse_bugcheck("SAC>id\nComputer Name: X\n") is None


def test_screen_text_renders_overwrites_and_escapes() -> None:
    screen = ScreenText()
    screen.feed("abc\r\nSAC>\a")
    assert screen.text == "abc\nSAC>" and screen.bells == 1
    assert screen.consume(8) == "abc\nSAC>"
    # a pager prompt erased with CR and spaces, then overwritten by the next page
    screen.feed("-- More  --")
    screen.consume(len("-- More  --"))
    screen.feed("\r           \rNext line\r\n")
    assert screen.text == "Next line\n"
    screen.consume(len(screen.text))
    # cursor positioning starts a new line; colours vanish; a split escape waits for its end
    screen.feed("one\x1b[2;1Htwo \x1b[1;37mbold\x1b[")
    screen.feed("0m!\x1b[K")
    assert screen.text == "one\ntwo bold!"


def test_an_errorlevel_arriving_in_pieces_is_read_whole() -> None:
    """CI once read %ERRORLEVEL% 9009 as 900: the read ended inside the number. Seen to fail with
    the pattern not anchored at the end of the line."""
    screen = ScreenText()
    pattern = status_pattern("b272e8")
    screen.feed("SCb272e8C:\\Windows\\system32>echo SCXb272e8_%ERRORLEVEL%\r\nSCXb272e8_900")
    assert pattern.search(screen.text) is None
    screen.feed("9\r\n")
    match = pattern.search(screen.text)
    assert match is not None and match.group(1) == "9009"
    assert status_pattern("ab").search("SCXab_-1\r\n").group(1) == "-1"  # type: ignore[union-attr]
