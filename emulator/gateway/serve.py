"""`sercon serve FLEET` and `sercon user add FLEET USER`: the command functions behind the CLI.

`serve_main(argv)` loads the fleet file, starts (or attaches to) its guests, and serves the web
console over HTTPS and the SSH front end until SIGINT/SIGTERM, then stops the guests it started.
Once listening it prints one line `SERVING {json}` (ports, certificate fingerprint, audit log
path) so scripts and tests can wait for it.

`user_main(argv)` is `sercon user add ...`; `user_add_main(argv)` hashes a password (prompted
twice, or one line on stdin with `--password-stdin`) and writes `[users.USER]` into the fleet file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from .. import event_loop, paths, settings
from ..errors import SerconError
from .audit import AuditLog
from .auth import hash_password, verify_password
from .fleet import Fleet, load_fleet, set_user
from .fleet_host import FleetHost
from .tls import ensure_certificate, fingerprint, server_context
from .web import make_app


def _state_dir(fleet_path: Path) -> Path:
    tag = hashlib.sha256(str(fleet_path).encode()).hexdigest()[:8]
    return paths.home() / "serve" / f"{fleet_path.stem}-{tag}"


#: The passwords of the demo users in examples/fleet.toml: never served beyond this machine.
DEMO_PASSWORDS = ("alice-owner-demo", "bob-contrib-demo", "carol-reader-demo")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_demo_passwords(fleet: Fleet, host: str) -> None:
    """On an address other machines can reach, no user may have a demo password (each costs one scrypt)."""
    if is_loopback(host):
        return
    for user in fleet.users.values():
        if user.password_hash and any(verify_password(p, user.password_hash) for p in DEMO_PASSWORDS):
            raise SerconError(
                f"user {user.name!r} of {fleet.path} has a demo password, and {host} is not a loopback address; "
                f"set a real one first: sercon user add {fleet.path} {user.name}")


async def _serve(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    host_addr = args.host or fleet.host
    refuse_demo_passwords(fleet, host_addr)
    port = fleet.port if args.port is None else args.port
    ssh_port = fleet.ssh_port if args.ssh_port is None else args.ssh_port
    state = _state_dir(fleet.path)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key, generated = ensure_certificate(fleet.cert, fleet.key, paths.home() / "serve" / "tls", host_addr)
    context = server_context(cert, key)
    audit = AuditLog(fleet.audit_log or state / "audit.jsonl")
    host = FleetHost(fleet, audit)
    print(f"sercon serve: {len(fleet.vms)} guest(s) from {fleet.path}", flush=True)
    loop = asyncio.get_running_loop()
    app = make_app(host)
    # handler_cancellation: a request whose client went away stops (a SysRq sequence stops sending).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2, handler_cancellation=True)
    ssh_server = None
    try:
        await loop.run_in_executor(None, host.start_guests)
        await runner.setup()
        site = web.TCPSite(runner, host_addr, port, ssl_context=context, reuse_address=True)
        await site.start()
        bound_port = port
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            bound_port = server.sockets[0].getsockname()[1]
        bound_ssh = 0
        if ssh_port >= 0 and not args.no_ssh:
            from .ssh import start_ssh

            ssh_server, bound_ssh = await start_ssh(host, host_addr, ssh_port,
                                                    fleet.ssh_host_key or paths.home() / "serve" / "ssh_host_key")
        fp = fingerprint(cert)
        print(f"TLS certificate {cert}{' (generated now)' if generated else ''}", flush=True)
        print(f"  SHA-256 fingerprint {fp}", flush=True)
        print(f"web console: https://{host_addr}:{bound_port}/", flush=True)
        if ssh_server is not None:
            print(f"SSH console: ssh -p {bound_ssh} USER+VM@{host_addr}", flush=True)
        print(f"audit log: {audit.path}", flush=True)
        print("SERVING " + json.dumps({"host": host_addr, "port": bound_port, "ssh_port": bound_ssh,
                                       "fingerprint": fp, "cert": str(cert), "audit_log": str(audit.path),
                                       "vms": list(fleet.vms)}), flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("sercon serve: shutting down", flush=True)
    finally:
        if ssh_server is not None:
            ssh_server.close()
        await runner.cleanup()
        if not args.keep_guests:
            await loop.run_in_executor(None, host.stop_guests)
        audit.close()
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sercon serve",
                                     description="Serve a fleet's serial consoles over HTTPS and SSH.")
    parser.add_argument("fleet", type=Path, help="fleet file (TOML), e.g. examples/fleet.toml")
    parser.add_argument("--host", default=None, help="address to bind (default: [serve] host, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="HTTPS port (default: [serve] port, else 8443; 0: any)")
    parser.add_argument("--ssh-port", type=int, default=None,
                        help="SSH port (default: [serve] ssh_port, else 8022; 0: any)")
    parser.add_argument("--no-ssh", action="store_true", help="do not start the SSH front end")
    parser.add_argument("--keep-guests", action="store_true", help="leave the guests running on exit")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the audit log, TLS key, SSH host key, screenshots: this user's only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings.check()  # before the loop it picks, and the guests' owners
        return event_loop.run(_serve(args))
    except SerconError as exc:
        print(f"sercon serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sercon serve: {exc} (is the port in use? pick another with --port / --ssh-port)", file=sys.stderr)
        return 1


def user_add_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sercon user add",
                                     description="Add a user to a fleet file, or change their password / SSH keys.")
    parser.add_argument("fleet", type=Path, help="fleet file (TOML)")
    parser.add_argument("user", help="user name (lower-case letters, digits, '_', '.', '-')")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    parser.add_argument("--ssh-key", type=Path, action="append", default=None,
                        help="public key file (e.g. ~/.ssh/id_ed25519.pub) for SSH logins; may repeat")
    parser.add_argument("--no-password", action="store_true", help="SSH keys only; keep or set no password")
    args = parser.parse_args(argv)
    try:
        password_hash = None
        if not args.no_password:
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.user}: ")
                if getpass.getpass("again: ") != password:
                    print("sercon user add: the passwords differ; nothing was written", file=sys.stderr)
                    return 1
            if len(password) < 8:
                print("sercon user add: use a password of at least 8 characters", file=sys.stderr)
                return 1
            password_hash = hash_password(password)
        keys = None
        if args.ssh_key:
            keys = [k.read_text().strip() for k in args.ssh_key]
        if password_hash is None and keys is None:
            print("sercon user add: nothing to write (give a password or --ssh-key)", file=sys.stderr)
            return 1
        existed = set_user(args.fleet, args.user, password_hash, keys)
        load_fleet(args.fleet)
    except (SerconError, OSError) as exc:
        print(f"sercon user add: {exc}", file=sys.stderr)
        return 1
    print(f"{'updated' if existed else 'added'} user {args.user} in {args.fleet}; give them a role in a VM's "
          f"roles table, e.g. roles = {{ {args.user} = \"contributor\" }}")
    return 0


def user_main(argv: list[str] | None = None) -> int:
    """`sercon user SUBCOMMAND ...`: only `add` for now."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: sercon user add FLEET USER [--password-stdin] [--ssh-key FILE] [--no-password]")
        return 0 if args else 2
    if args[0] != "add":
        print(f"sercon user: unknown subcommand {args[0]!r}; use `sercon user add FLEET USER`", file=sys.stderr)
        return 2
    return user_add_main(args[1:])


if __name__ == "__main__":  # python -m emulator.gateway.serve FLEET
    sys.exit(serve_main())
