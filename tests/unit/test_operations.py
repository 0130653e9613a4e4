"""The operations table is the one place an operation exists: the owner's dispatch, Machine, the
gateway's routes and authorization, and the CLI all follow it."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.cli import build_parser
from emulator.control import ControlServer
from emulator.errors import ControlError
from emulator.gateway.fleet import PERMISSIONS
from emulator.gateway.fleet_host import ACTIONS
from emulator.machine import Machine
from emulator.operations import OPERATIONS, gateway_operations, lookup

#: Machine's spelling where it differs from the operation's name.
MACHINE_METHOD = {"log": "read_log_remote", "snapshot": "snapshot", "restore": "restore"}


def test_owner_dispatch_has_one_handler_per_operation() -> None:
    server = ControlServer(owner=None, path=None)  # type: ignore[arg-type]
    assert set(server.handlers) == set(OPERATIONS)


def test_machine_has_a_method_per_operation_with_the_tables_arguments() -> None:
    for op in OPERATIONS.values():
        method = getattr(Machine, MACHINE_METHOD.get(op.name, op.name))
        params = inspect.signature(method).parameters
        for arg in op.args:
            spread = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            assert arg.name in params or spread, (op.name, arg.name)


def test_gateway_offers_exactly_the_operations_with_a_permission() -> None:
    assert ACTIONS == gateway_operations()
    assert set(ACTIONS) == {"sysrq", "send-break", "nmi", "reset", "restart", "power-cycle"}
    for op in ACTIONS.values():
        assert op.permission in PERMISSIONS["contributor"] and not op.owner_only
    # The monitor, files at a path, snapshots and stop are never offered by the gateway.
    assert not {"qmp", "screenshot", "snapshot", "restore", "stop"} & set(ACTIONS)
    from aiohttp.test_utils import make_mocked_request

    from emulator.gateway.web import make_app

    app = make_app(host=_FakeHost())  # type: ignore[arg-type]

    async def route(path: str) -> Any:
        return await app.router.resolve(make_mocked_request("POST", path, app=app))

    for name in ACTIONS:
        match = asyncio.run(route(f"/api/vms/pool/1/{name}"))
        assert match.get("action") == name, (name, match)
    for name in ("qmp", "screenshot", "stop", "power_cycle"):
        assert asyncio.run(route(f"/api/vms/web1/{name}")).get("action") is None


def test_cli_has_a_subcommand_per_simple_operation() -> None:
    parser = build_parser()
    for op in OPERATIONS.values():
        if op.simple_cli:
            args = parser.parse_args([op.cli_name, "vm", *(["h"] if op.name == "sysrq" else [])])
            assert args.command == op.cli_name


def test_spellings_and_bad_requests_are_one_clear_line() -> None:
    assert lookup("power-cycle") is lookup("power_cycle") is OPERATIONS["power_cycle"]
    assert lookup("break") is OPERATIONS["send_break"]
    with pytest.raises(ControlError, match="unknown operation 'launch'; known: info, sysrq"):
        lookup("launch")
    with pytest.raises(ControlError, match="restart: timeout must be from 1 to 600, not 0"):
        OPERATIONS["restart"].parse({"timeout": 0})
    with pytest.raises(ControlError, match="restart: timeout must be a number, not 'soon'"):
        OPERATIONS["restart"].parse({"timeout": "soon"})
    with pytest.raises(ControlError, match="sysrq: missing keys"):
        OPERATIONS["sysrq"].parse({})
    with pytest.raises(ControlError, match=r"nmi: unknown argument\(s\) force; it takes no arguments"):
        OPERATIONS["nmi"].parse({"force": True})
    assert OPERATIONS["restart"].parse({}) == {"timeout": 60.0}
    assert OPERATIONS["restart"].timeout({"timeout": 100}) == 130


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["op", "keys", "interval", "timeout", "name", "path", "start", "length",
                                        "since", "command", "arguments", "extra", "by", "zzz"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), max_size=5))
def test_owner_json_requests_are_checked_or_refused_clearly(request_: dict[str, Any]) -> None:
    """The owner protocol's JSON lines: any object either parses to typed arguments or is one ControlError."""
    try:
        op = lookup(request_.get("op"))
        args = op.parse(request_)
    except ControlError as exc:
        assert "\n" not in str(exc)
        return
    for arg in op.args:
        value = args[arg.name]
        assert value is None or not isinstance(value, bool)


class _FakeHost:
    """Enough of FleetHost for make_app to build its routes."""

    limiter = None
    fleet = None
