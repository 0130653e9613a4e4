"""libvirt host URIs, as `GuestSpec.host`, `sercon up --host`, `--sercon-host` and the fleet file take them.

    qemu:///system                                   the libvirt daemon on this machine
    qemu+ssh://[user@]host[:port]/system[?keyfile=K]  any host, through SSH
    qemu+tls://host/system, qemu+tcp://host/system   libvirt's own network transports

Pure (no libvirt import): the spec checks a URI before anything connects.
"""

from __future__ import annotations

import urllib.parse

from .errors import SerconError

#: The transports of libvirt's QEMU driver (libvirt.org/uri.html, "Remote URIs").
TRANSPORTS = ("", "ssh", "libssh", "libssh2", "tls", "tcp", "unix", "ext")
EXAMPLES = "qemu:///system or qemu+ssh://[user@]host[:port]/system"


def check_host_uri(uri: str) -> str:
    """`uri` if it names a QEMU host sercon can drive; else one line saying what would."""
    parsed = urllib.parse.urlsplit(uri)
    driver, _, transport = parsed.scheme.partition("+")
    if not parsed.scheme or "://" not in uri:
        raise SerconError(f"host {uri!r} is not a libvirt URI: use {EXAMPLES}")
    if driver != "qemu" or transport not in TRANSPORTS:
        raise SerconError(f"unknown libvirt URI scheme {parsed.scheme!r} in host {uri!r}: sercon drives QEMU "
                          f"hosts ({EXAMPLES}; transports: {', '.join(t for t in TRANSPORTS if t)})")
    if parsed.path not in ("/system", "/session"):
        raise SerconError(f"host {uri!r} should end in /system (or /session): {EXAMPLES}")
    if transport in ("ssh", "libssh", "libssh2", "tls", "tcp") and not parsed.hostname:
        raise SerconError(f"host {uri!r} names no machine: qemu+{transport}://HOST/system "
                          "(or qemu:///system for this one)")
    return uri


def is_this_machine(uri: str) -> bool:
    """True when the URI's daemon runs here (no host part, or a loopback address)."""
    host = urllib.parse.urlsplit(uri).hostname
    return host in (None, "", "localhost", "127.0.0.1", "::1")


def display(uri: str) -> str:
    """The URI without its query (key files and options stay out of listings)."""
    parsed = urllib.parse.urlsplit(uri)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
