"""Fixtures for guests on libvirt hosts: the local daemon (started if needed) and a second "host"
reached through a real sshd on 127.0.0.1 (qemu+ssh://)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from emulator import libvirt_local
from emulator.ssh_loopback import loopback_sshd


@pytest.fixture(scope="session")
def local_host() -> str:
    if os.geteuid() != 0:
        pytest.skip("starts libvirtd: root only")
    if libvirt_local.daemon_binary("libvirtd") is None:
        pytest.skip("libvirt-daemon is not installed (make setup)")
    return libvirt_local.ensure_local_libvirt()


@pytest.fixture(scope="session")
def ssh_host(local_host: str) -> Iterator[str]:
    with loopback_sshd() as sshd:
        yield sshd.libvirt_uri()


@pytest.fixture(scope="session", params=["qemu:///system", "qemu+ssh"])
def host(request: pytest.FixtureRequest, local_host: str) -> str:
    """Each libvirt test runs on both kinds of host."""
    if request.param == "qemu+ssh":
        return str(request.getfixturevalue("ssh_host"))
    return local_host
