"""Serial consoles over the network: `sercon serve FLEET` (web console over HTTPS, SSH front end).

One module per concern: fleet (fleet file, users, roles), auth (password KDF, sessions, CSRF, rate
limit), audit (JSON-lines audit log), tls (certificates, TLS 1.2 minimum), guests (the fleet's
guests, authorization and actions, shared by both front ends), web (aiohttp app, REST, websocket
bridge), ssh (asyncssh server), serve (the `serve` and `user add` commands). Static pages live
in `static/`; xterm.js comes from npm (`package.json`, installed by `make setup`).

The command functions are `emulator.web.serve.serve_main(argv)` and `user_add_main(argv)`; this
package imports nothing by itself, so `python -m emulator.web.serve FLEET` runs cleanly.
"""
