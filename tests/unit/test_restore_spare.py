"""Which guests get a restore spare: a second QEMU of the guest must not take what the first holds."""

from __future__ import annotations

import pytest

from emulator.local_qemu import spares_enabled


def test_options_that_hold_nothing_on_the_host_allow_a_spare() -> None:
    assert spares_enabled([])
    assert spares_enabled(["-boot", "menu=on,splash-time=1000"])  # the UEFI images' own
    assert spares_enabled(["-device", "virtio-rng-pci", "-global", "kvm-pit.lost_tick_policy=delay"])


@pytest.mark.parametrize("args", [
    ["-chardev", "socket,id=mon,path=/tmp/mon.sock,server=on,wait=off"],  # a spare would bind it again
    ["-netdev", "user,id=n0,hostfwd=tcp::2222-:22"],  # and this host port
    ["-boot", "menu=on", "-drive", "file=/data/extra.img,if=virtio"],  # and lock this image
    ["-serial", "tcp::4555,server=on"],
])
def test_options_that_may_hold_a_host_resource_get_no_spare(args: list[str]) -> None:
    assert not spares_enabled(args)


def test_sercon_restore_spare_0_turns_spares_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERCON_RESTORE_SPARE", "0")
    assert not spares_enabled([])
