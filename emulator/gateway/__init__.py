"""The network front ends of sercon: `sercon serve FLEET` (web console over HTTPS, SSH console).

One module per concern: fleet (fleet file, users, roles), auth (password KDF, sessions, CSRF,
login limiter and password checks), audit (JSON-lines audit log, rotated and throttled), tls
(certificates, TLS 1.2 minimum), fleet_host (`FleetHost`: the fleet's guests, authorization,
actions from the operations table, console connections; shared by both front ends), bridge (the
one console bridge both front ends use), web (aiohttp app, REST, websocket), ssh (asyncssh
server; its `~` escapes are `emulator.ssh_escape`), serve (the `serve` and `user add` commands).
Static pages live in `static/`; xterm.js comes from npm (`package.json`, installed by `make setup`).

The command functions are `emulator.gateway.serve.serve_main(argv)` and `user_add_main(argv)`; this
package imports nothing by itself, so `python -m emulator.gateway.serve FLEET` runs cleanly.
"""
