"""The pure parts of the libvirt backend: host URIs, the domain XML, the save-file rename, fleet hosts."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from emulator.errors import SerconError
from emulator.host_uri import check_host_uri, display, is_this_machine
from emulator.spec import GuestSpec


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+ssh://root@10.0.0.2:2222/system?keyfile=/k&no_verify=1",
                                 "qemu+tls://lab1/system", "qemu:///session"])
def test_qemu_uris_are_taken(uri: str) -> None:
    assert check_host_uri(uri) == uri


@pytest.mark.parametrize(("uri", "says"), [
    ("xen:///system", "unknown libvirt URI scheme 'xen'"),
    ("qemu+carrier-pigeon://h/system", "unknown libvirt URI scheme"),
    ("lab1", "not a libvirt URI"),
    ("qemu+ssh:///system", "names no machine"),
    ("qemu:///", "should end in /system"),
])
def test_bad_uris_get_one_line_that_says_what_works(uri: str, says: str) -> None:
    with pytest.raises(SerconError, match=says) as caught:
        check_host_uri(uri)
    assert "\n" not in str(caught.value) and "qemu:///system" in str(caught.value)


def test_a_spec_with_a_bad_host_is_refused_before_anything_starts(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fELF")
    with pytest.raises(SerconError, match="unknown libvirt URI scheme"):
        GuestSpec(kernel=str(kernel), host="vmware://esx/system").validate()


def test_display_keeps_key_files_out_and_loopback_counts_as_here() -> None:
    assert display("qemu+ssh://root@127.0.0.1:2222/system?keyfile=/secret/k") == "qemu+ssh://root@127.0.0.1:2222/system"
    assert display("qemu:///system") == "qemu:///system"
    assert is_this_machine("qemu:///system") and is_this_machine("qemu+ssh://root@127.0.0.1:22/system")
    assert not is_this_machine("qemu+ssh://lab1/system")


libvirt_host = pytest.importorskip("emulator.libvirt_host")


def test_domain_xml_is_the_local_machine(tmp_path: Path) -> None:
    spec = GuestSpec(kernel="/k", initrd="/i", append="console=ttyS0,115200 x='1'", memory_mb=384, cpus=2,
                     extra_args=["-device", "i6300esb"])
    xml = libvirt_host.domain_xml(spec, name="sercon-" + "a" * 32, domain_uuid="u", title="t <&>", accel="tcg",
                                  kernel="/pool/k", initrd="/pool/i")
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("memory") == "384" and root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/pool/k" and root.findtext("os/cmdline") == spec.append
    assert root.find("devices/serial/target").get("type") == "isa-serial"  # a 16550 on COM1
    assert root.find("devices/panic").get("model") == "isa"  # pvpanic
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args == ["-action", "panic=none", "-device", "i6300esb"]
    assert root.findtext("title") == "t <&>"
    disk = libvirt_host.domain_xml(GuestSpec(disk="/d", pvpanic=False), name="n", domain_uuid="u", title="t",
                                   accel="kvm", disk="/pool/overlay.qcow2")
    droot = ET.fromstring(disk)
    assert droot.get("type") == "kvm" and droot.find("devices/disk/source").get("file") == "/pool/overlay.qcow2"
    assert droot.find("devices/panic") is None and droot.find("os/boot").get("dev") == "hd"


def test_uefi_and_secure_boot_in_the_domain() -> None:
    spec = GuestSpec(disk="/d", machine="q35", firmware="/f/CODE.secboot.fd", firmware_vars="/f/VARS.ms.fd",
                     secure_boot=True)
    root = ET.fromstring(libvirt_host.domain_xml(spec, name="n", domain_uuid="u", title="t", accel="tcg",
                                                 disk="/pool/o.qcow2", firmware="/pool/CODE",
                                                 firmware_vars="/pool/VARS", nvram="/pool/n-VARS.fd"))
    loader = root.find("os/loader")
    assert loader.text == "/pool/CODE" and loader.get("secure") == "yes" and loader.get("readonly") == "yes"
    assert root.find("os/nvram").get("template") == "/pool/VARS" and root.find("os/nvram").text == "/pool/n-VARS.fd"
    assert root.find("features/smm") is not None and root.find("os/type").get("machine") == "q35"
    plain = ET.fromstring(libvirt_host.domain_xml(spec.replace(secure_boot=False), name="n", domain_uuid="u",
                                                  title="t", accel="tcg", firmware="/pool/CODE"))
    assert plain.find("os/loader").get("secure") is None and plain.find("features/smm") is None


def test_a_save_header_is_renamed_in_place() -> None:
    old = ("sercon-" + "1" * 32, "11111111-1111-1111-1111-111111111111")
    new = ("sercon-" + "2" * 32, "22222222-2222-2222-2222-222222222222")
    xml = f"<domain><name>{old[0]}</name><uuid>{old[1]}</uuid></domain>\0".encode()
    cookie = f"<qemu-migration><name>{old[0]}</name><uuid>{old[1]}</uuid></qemu-migration>\0".encode()
    data = xml + cookie + bytes(1024)
    header = libvirt_host.SAVE_HEADER.pack(libvirt_host.SAVE_MAGIC, 2, len(data), 0, 0, len(xml)) + data
    stream = b"QEVM...the guest's state"
    renamed = libvirt_host.rename_save_header(header + stream, old, new)
    assert len(renamed) == len(header + stream) and renamed.endswith(stream)
    assert old[0].encode() not in renamed and old[1].encode() not in renamed
    assert renamed.count(new[0].encode()) == 2 and renamed.count(new[1].encode()) == 2
    with pytest.raises(SerconError, match="not a libvirt save file"):
        libvirt_host.rename_save_header(b"QEVM" + bytes(200), old, new)
    with pytest.raises(SerconError, match="another width"):
        libvirt_host.rename_save_header(header, old, ("short", new[1]))
    assert struct.calcsize("<16s5I56x") == libvirt_host.SAVE_HEADER.size == 92


def test_ppm_screenshots_become_png() -> None:
    png = libvirt_host.ppm_to_png(b"P6\n2 1\n255\n" + bytes([255, 0, 0, 0, 255, 0]))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in png and png.endswith(b"IEND\xaeB`\x82")


def test_fleet_hosts_spread_a_scale_set_and_bad_ones_name_the_entry(tmp_path: Path) -> None:
    from emulator.gateway.fleet import FleetError, load_fleet

    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text('[vms.web1]\nhost = "qemu:///system"\n'
                          '[scale_sets.pool]\ninstances = 3\nhosts = ["qemu:///system", "qemu+ssh://b/system"]\n')
    fleet = load_fleet(fleet_file)
    assert fleet.vms["web1"].overrides["host"] == "qemu:///system"
    assert [fleet.vms[f"pool/{i}"].overrides["host"] for i in range(3)] == [
        "qemu:///system", "qemu+ssh://b/system", "qemu:///system"]
    for bad, says in (('[vms.a]\nhost = "xen:///"\n', r"\[vms.a\].*unknown libvirt URI scheme"),
                      ('[vms.a]\nhosts = ["qemu:///system"]\n', "hosts .* is for scale sets"),
                      ('[scale_sets.p]\nhosts = []\n', "hosts must be a list"),
                      ('[scale_sets.p]\nhost = "qemu:///system"\nhosts = ["qemu:///system"]\n', "not both")):
        fleet_file.write_text(bad)
        with pytest.raises(FleetError, match=says):
            load_fleet(fleet_file)
