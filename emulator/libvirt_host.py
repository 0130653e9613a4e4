"""The libvirt backend: a guest's QEMU as a domain on any libvirt host (`GuestSpec.host`).

The owner stays on this machine and keeps doing all it does (serial.log, clients, takeover,
events); only QEMU moves. Per guest:

- **Files.** The kernel, initrd or disk are uploaded once to the host's storage pool (`sercon`
  by default, `SERCON_LIBVIRT_POOL`), named after their identity hash, so each is sent once per
  host; disks are sent sparse. A disk guest writes to its own qcow2 overlay volume in the pool.
- **Domain.** Transient, generated from the spec (`domain_xml`, pure), started paused with
  `VIR_DOMAIN_START_AUTODESTROY` (it dies with the owner's connection, as a local QEMU dies with
  the owner), named `sercon-<uuid hex>` and titled with the guest's name and owner.
- **COM1.** The 16550's pty, read through libvirt's console stream (`virDomainOpenConsole`,
  forced: the owner holds the console, as it holds the socket of a local QEMU), opened before
  the guest runs so no byte is missed. If another client takes the console over (`virsh console
  --force`), that is recorded and the owner takes it back as soon as it is free.
- **Commands.** QMP through `virDomainQemuMonitorCommand` (BREAK is `chardev-send-break` on
  `charserial0`); NMI, reset, the ACPI button and screenshots through libvirt's own API.
- **Events.** QEMU's own events through libvirt's QEMU monitor event callback, so RESET says
  whether the guest or the host asked, as it does locally; libvirt's lifecycle callback tells a
  domain that stopped without sercon (destroyed with virsh, crashed, the host went away).
- **Snapshots.** `virDomainSaveFlags` to a file in the pool, restored with
  `virDomainRestoreFlags`, on the host that made it. libvirt restores a save file only under
  the name and UUID it was saved with, so each restore works on a copy of the file whose header
  names the new guest's domain (both fixed width: the header keeps its length).

Every libvirt call that may block runs in a thread; events and the console stream run on the
owner's asyncio loop (libvirtaio).
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import logging
import os
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from .errors import ActionFailed, GuestNotRunning, SerconError, SnapshotError

try:
    import libvirt
    import libvirt_qemu
except ImportError as _missing:  # the owner of a local guest never imports this module
    raise SerconError(
        "guests on libvirt hosts need libvirt's Python binding: `pip install 'sercon[libvirt]'` (it builds against "
        "libvirt-dev and pkg-config) or `apt-get install python3-libvirt`; `make setup` installs it") from _missing

from .backend import Backend
from .host_uri import display, is_this_machine

if TYPE_CHECKING:
    from .snapshots import Snapshot
    from .spec import GuestSpec

log = logging.getLogger("sercon.libvirt")

DEFAULT_POOL = "sercon"
#: libvirt's name for COM1's chardev (`<serial>` port 0).
SERIAL_ID = "charserial0"
#: QEMU events the owner acts on; the monitor event callback passes these through.
QEMU_EVENTS = ("RESET", "SHUTDOWN", "GUEST_PANICKED", "STOP", "RESUME", "WATCHDOG")
#: libvirt's save file header (src/qemu/qemu_saveimage.h): magic, then version, data_len,
#: was_running, compressed, cookieOffset and 14 unused uint32s; the domain XML follows.
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_HEADER = struct.Struct("<16s5I56x")
STOP_DETAILS = {0: "shut down", 1: "destroyed", 2: "crashed", 3: "migrated", 4: "saved", 5: "failed",
                6: "from snapshot"}

_EVENT_LOOP_REGISTERED = False


def pool_name() -> str:
    return os.environ.get("SERCON_LIBVIRT_POOL", DEFAULT_POOL)


def _first_line(exc: BaseException) -> str:
    text = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
    return (text or str(exc)).strip().splitlines()[0] if (text or str(exc)).strip() else type(exc).__name__


def connect(uri: str) -> libvirt.virConnect:
    """An open connection to `uri`, or one line saying why there is none and what to check."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        hint = ("start it with `make libvirt-local`" if is_this_machine(uri)
                else "check that libvirtd runs there and that this user can log in over SSH without a password")
        raise SerconError(f"cannot reach libvirt host {display(uri)}: {_first_line(exc)}; {hint}") from exc


def storage_pool(conn: libvirt.virConnect, uri: str, name: str | None = None) -> libvirt.virStoragePool:
    """The pool guests' files go to, active; one line with the commands that make it if it is missing."""
    name = name or pool_name()
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        c = f"virsh -c '{display(uri)}'"
        raise SerconError(
            f"libvirt host {display(uri)} has no storage pool {name!r}: make it with `{c} pool-define-as {name} dir "
            f"--target /var/lib/libvirt/{name} && {c} pool-build {name} && {c} pool-start {name} && "
            f"{c} pool-autostart {name}` (on this machine: `make libvirt-local`)") from exc
    if not pool.isActive():
        try:
            pool.create(0)
        except libvirt.libvirtError as exc:
            raise SerconError(f"storage pool {name!r} on {display(uri)} is inactive and would not start: "
                              f"{_first_line(exc)}") from exc
    return pool


def pool_target(pool: libvirt.virStoragePool) -> str:
    """The pool's folder on its host."""
    xml = pool.XMLDesc(0)
    start = xml.index("<path>", xml.index("<target>")) + len("<path>")
    return str(xml[start:xml.index("</path>", start)])


def _identity(path: str) -> str:
    stat = os.stat(path)
    return hashlib.sha256(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def upload(conn: libvirt.virConnect, pool: libvirt.virStoragePool, path: str, uri: str,
           readable: bool = False) -> str:
    """`path` as a volume of `pool` (sent once per file version: the name carries its identity hash),
    sent sparse; returns its path on the host. A marker volume says the upload finished. libvirt
    gives QEMU the kernel, initrd and disk itself; `readable` files (UEFI CODE flash, public anyway)
    are opened by QEMU as they are, so they are made readable to it."""
    base = Path(path).name
    name = f"img-{_identity(path)}-{base}"
    done = f"{name}.ok"
    try:
        pool.storageVolLookupByName(done)
        return str(pool.storageVolLookupByName(name).path())
    except libvirt.libvirtError:
        pass
    size = os.path.getsize(path)
    try:
        try:  # a half-sent volume from an interrupted upload
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError:
            pass
        vol = pool.createXML(_volume_xml(name, size, "raw", mode="0644" if readable else None), 0)
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        with open(path, "rb") as fh:
            _send_sparse(stream, fh.fileno())
        stream.finish()
        pool.createXML(_volume_xml(done, 0, "raw"), 0)
    except (libvirt.libvirtError, OSError) as exc:
        raise SerconError(f"uploading {path} to pool {pool.name()!r} on {display(uri)} failed: "
                          f"{_first_line(exc)}") from exc
    log.info("uploaded %s to %s on %s (%d bytes)", path, name, display(uri), size)
    return str(vol.path())


def _send_sparse(stream: libvirt.virStream, fd: int) -> None:
    """Send a file through a sparse stream: data as data, holes as holes (SEEK_DATA/SEEK_HOLE)."""
    end = os.fstat(fd).st_size

    def hole(_stream: libvirt.virStream, _fd: int) -> list[Any]:
        here = os.lseek(_fd, 0, os.SEEK_CUR)
        if here >= end:
            return [True, 0]
        try:
            data = os.lseek(_fd, here, os.SEEK_DATA)
        except OSError:  # only a hole is left
            data = end
        if data > here:
            os.lseek(_fd, here, os.SEEK_SET)
            return [False, data - here]
        next_hole = os.lseek(_fd, here, os.SEEK_HOLE)
        os.lseek(_fd, here, os.SEEK_SET)
        return [True, next_hole - here]

    def skip(_stream: libvirt.virStream, length: int, _fd: int) -> int:
        return os.lseek(_fd, length, os.SEEK_CUR)

    def read(_stream: libvirt.virStream, nbytes: int, _fd: int) -> bytes:
        return os.read(_fd, nbytes)

    stream.sparseSendAll(read, hole, skip, fd)


def _volume_xml(name: str, capacity: int, fmt: str, backing: tuple[str, str] | None = None,
                mode: str | None = None) -> str:
    back = (f"<backingStore><path>{escape(backing[0])}</path><format type='{backing[1]}'/></backingStore>"
            if backing else "")
    permissions = f"<permissions><mode>{mode}</mode></permissions>" if mode else ""
    return (f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<target><format type='{fmt}'/>{permissions}</target>{back}</volume>")


def domain_xml(spec: GuestSpec, *, name: str, domain_uuid: str, title: str, accel: str,
               kernel: str | None = None, initrd: str | None = None, disk: str | None = None,
               firmware: str | None = None, firmware_vars: str | None = None, nvram: str | None = None) -> str:
    """The domain for one power-on of `spec`, with its files at the given host paths.

    The same machine as the local command line (emulator/qemu_args.py): COM1 a 16550 on ISA
    (libvirt's pty chardev), pvpanic, a VGA screen, no network. QEMU reports panics and leaves
    the guest alone (`-action panic=none`, as locally: the guest's own kernel.panic decides), and
    the spec's `extra_args` go through libvirt's QEMU command-line passthrough. UEFI: the CODE
    flash read-only, the guest's own variable store `nvram`, made by libvirt from `firmware_vars`;
    Secure Boot adds SMM and a secure loader, as locally."""
    os_parts = [f"<type arch='x86_64' machine='{escape(spec.machine.split(',')[0])}'>hvm</type>"]
    if firmware:
        secure = " secure='yes'" if spec.secure_boot else ""
        os_parts.append(f"<loader readonly='yes' type='pflash'{secure}>{escape(firmware)}</loader>")
        if nvram:
            template = f" template='{escape(firmware_vars)}'" if firmware_vars else ""
            os_parts.append(f"<nvram{template}>{escape(nvram)}</nvram>")
    if kernel:
        os_parts.append(f"<kernel>{escape(kernel)}</kernel>")
        if initrd:
            os_parts.append(f"<initrd>{escape(initrd)}</initrd>")
        if spec.append:
            os_parts.append(f"<cmdline>{escape(spec.append)}</cmdline>")
    else:
        os_parts.append("<boot dev='hd'/>")
    devices = [
        "<serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>",
        "<console type='pty'><target type='serial' port='0'/></console>",
        "<video><model type='vga'/></video>",
        "<memballoon model='none'/>",
    ]
    if spec.pvpanic:
        devices.append("<panic model='isa'/>")
    if disk:
        bus = "virtio" if spec.disk_interface == "virtio" else "ide"
        target = "vda" if bus == "virtio" else "hda"
        devices.append(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                       f"<source file='{escape(disk)}'/><target dev='{target}' bus='{bus}'/></disk>")
    args = ["-action", "panic=none", *spec.extra_args]
    passthrough = "".join(f"<qemu:arg value='{escape(a, {chr(39): '&apos;'})}'/>" for a in args)
    cpu = "<cpu mode='host-passthrough'/>" if accel == "kvm" else ""
    return (
        f"<domain type='{'kvm' if accel == 'kvm' else 'qemu'}' "
        "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        f"<name>{name}</name><uuid>{domain_uuid}</uuid><title>{escape(title)}</title>"
        f"<memory unit='MiB'>{spec.memory_mb}</memory><vcpu>{spec.cpus}</vcpu>"
        f"<os>{''.join(os_parts)}</os><features><acpi/>{'<smm/>' if spec.secure_boot else ''}</features>{cpu}"
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>preserve</on_crash>"
        f"<devices>{''.join(devices)}</devices>"
        f"<qemu:commandline>{passthrough}</qemu:commandline></domain>"
    )


def with_disk(xml: str, disk: str) -> str:
    """A domain XML with its (one) disk's file replaced: a restore writes to an overlay of its own."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    source = root.find("devices/disk/source")
    if source is None:
        raise SnapshotError("the snapshot's domain has no disk to give an overlay to")
    source.set("file", disk)
    for backing in root.findall("devices/disk/backingStore"):  # libvirt reads the new chain itself
        root.find("devices/disk").remove(backing)  # type: ignore[union-attr]
    return ET.tostring(root, encoding="unicode")


def rename_save_header(header: bytes, old: tuple[str, str], new: tuple[str, str]) -> bytes:
    """A save file's header and XML with the domain's name and UUID swapped for others of the same
    width (`sercon-<uuid hex>`, canonical UUID), so the file's layout is unchanged."""
    magic, version, data_len, *_ = SAVE_HEADER.unpack_from(header)
    if magic != SAVE_MAGIC or version != 2:
        raise SnapshotError(f"not a libvirt save file this sercon knows (magic {magic!r}, version {version})")
    data = header[SAVE_HEADER.size:SAVE_HEADER.size + data_len]
    for before, after in zip(old, new, strict=True):
        if len(before) != len(after):
            raise SnapshotError("a domain name or UUID of another width cannot be swapped in place")
        data = data.replace(before.encode(), after.encode())
    return header[:SAVE_HEADER.size] + data + header[SAVE_HEADER.size + data_len:]


def _sink(into: bytearray) -> Any:
    """A `virStream.recvAll` handler that collects into `into`."""
    def handler(_stream: libvirt.virStream, chunk: bytes, _opaque: object) -> int:
        into.extend(chunk)
        return len(chunk)
    return handler


def _register_event_loop() -> None:
    global _EVENT_LOOP_REGISTERED
    if not _EVENT_LOOP_REGISTERED:
        import libvirtaio

        # libvirt prints every error on stderr by default; sercon reports the ones that matter itself.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirtaio.virEventRegisterAsyncIOImpl(loop=asyncio.get_running_loop())
        _EVENT_LOOP_REGISTERED = True


class LibvirtDomain(Backend):
    kind = "libvirt"
    serial_id = SERIAL_ID

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.spec.host is not None
        self.uri = self.spec.host
        self.conn: libvirt.virConnect | None = None
        self.pool: libvirt.virStoragePool | None = None
        self.dom: libvirt.virDomain | None = None
        uid = uuid.uuid4()
        self.domain_uuid = str(uid)
        self.domain_name = f"sercon-{uid.hex}"
        # Names the guest, its user and its folder: orphans of this very guest are found by it, and
        # never a guest of the same name from another SERCON_HOME.
        where = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:8]
        self.title = f"sercon guest {self.name} of {getpass.getuser()}@{socket.gethostname()} ({where})"
        self._stream: Any = None
        self._files: dict[str, str] = {}
        self._overlay: libvirt.virStorageVol | None = None
        self._expected_stop = False
        self._powered_off = False
        self._saving = False
        self._last_stop = ""
        self._callbacks: list[int] = []
        self._reclaim: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------ connection

    async def _connect(self) -> libvirt.virConnect:
        if self.conn is not None:
            return self.conn
        _register_event_loop()
        conn = await asyncio.to_thread(connect, self.uri)
        self.pool = await asyncio.to_thread(storage_pool, conn, self.uri)
        try:
            conn.setKeepAlive(5, 3)  # a host that goes away closes the connection within ~20 s
        except libvirt.libvirtError:
            pass
        conn.registerCloseCallback(self._on_connection_closed, None)
        self._callbacks.append(conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
        self._callbacks.append(libvirt_qemu.qemuMonitorEventRegister(conn, None, None, self._on_monitor_event, None, 0))
        self.conn = conn
        await asyncio.to_thread(self._destroy_orphans, conn)
        return conn

    def _destroy_orphans(self, conn: libvirt.virConnect) -> None:
        """Domains a previous owner of this guest left (one restored from a snapshot outlives its owner)."""
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                if dom.name().startswith("sercon-") and dom.metadata(
                        libvirt.VIR_DOMAIN_METADATA_TITLE, None) == self.title:
                    log.info("%s: destroying %s, left running by a previous owner", self.name, dom.name())
                    dom.destroy()
            except libvirt.libvirtError:
                continue

    def _on_connection_closed(self, conn: libvirt.virConnect, reason: int, opaque: object) -> None:
        self.conn = None
        if self.dom is not None and not self._expected_stop:
            self.dom = None
            self.hooks.on_exit(f"lost the connection to libvirt host {display(self.uri)}", f"close reason {reason}")

    # -------------------------------------------------------------- accel

    async def choose_accel(self) -> None:
        if self.spec.accel in ("tcg", "kvm"):
            self.accel, self.accel_reason = self.spec.accel, f"asked for in the spec (host {display(self.uri)})"
            return
        if is_this_machine(self.uri):  # the same /dev/kvm as a local guest: the same verdict
            from . import accel as accel_mod
            from .qemu_args import find_qemu

            self.accel, reason = await asyncio.to_thread(
                accel_mod.choose_accel, self.spec.accel, find_qemu(), self.spec.kernel)
            self.accel_reason = f"{reason} (this machine's verdict; host {display(self.uri)})"
            return
        conn = await self._connect()
        try:
            await asyncio.to_thread(conn.getDomainCapabilities, None, "x86_64", None, "kvm", 0)
            self.accel, self.accel_reason = "kvm", f"libvirt host {display(self.uri)} offers KVM"
        except libvirt.libvirtError:
            self.accel, self.accel_reason = "tcg", f"libvirt host {display(self.uri)} offers no KVM"

    # ------------------------------------------------------------ lifecycle

    async def _upload_files(self) -> None:
        conn = await self._connect()
        assert self.pool is not None
        for field_name in ("kernel", "initrd", "disk", "firmware", "firmware_vars"):
            path = getattr(self.spec, field_name)
            if path and field_name not in self._files:
                self._files[field_name] = await asyncio.to_thread(
                    upload, conn, self.pool, path, self.uri, field_name == "firmware")

    async def _make_overlay(self, backing: str, backing_format: str | None = None) -> str:
        """A new qcow2 overlay volume for this domain on `backing` (the image, or a snapshot's disk)."""
        assert self.pool is not None
        await self._drop_overlay()
        name = f"{self.domain_name}-overlay-{uuid.uuid4().hex[:6]}.qcow2"
        if backing_format is None:
            with open(self.spec.disk or "", "rb") as fh:
                backing_format = self.spec.disk_format or ("qcow2" if fh.read(4) == b"QFI\xfb" else "raw")
        size = os.path.getsize(self.spec.disk or "")
        try:
            overlay: Any = await asyncio.to_thread(
                self.pool.createXML, _volume_xml(name, size, "qcow2", (backing, backing_format)), 0)
        except libvirt.libvirtError as exc:
            raise SerconError(f"could not make a disk overlay in pool {self.pool.name()!r} on "
                              f"{display(self.uri)}: {_first_line(exc)}") from exc
        self._overlay = overlay
        return str(overlay.path())

    async def _drop_nvram(self) -> None:
        """The variable store libvirt made for this domain (a transient domain leaves it behind)."""
        if not self.spec.firmware_vars or self.pool is None:
            return
        pool = self.pool

        def drop() -> None:
            pool.refresh(0)
            pool.storageVolLookupByName(f"{self.domain_name}-VARS.fd").delete(0)

        try:
            await asyncio.to_thread(drop)
        except libvirt.libvirtError:
            pass

    async def _drop_overlay(self) -> None:
        if self._overlay is not None:
            try:
                await asyncio.to_thread(self._overlay.delete, 0)
            except libvirt.libvirtError:
                pass
            self._overlay = None

    async def power_on(self, reason: str, snapshot: Snapshot | None = None, *,
                       keep_disk: bool = False) -> dict[str, Any]:
        """A new domain, booting or restoring; `keep_disk`: on the current overlay (a restart)."""
        if self.dom is not None:
            raise SerconError("the domain is already running for this guest")
        if not self.accel:
            await self.choose_accel()
        conn = await self._connect()
        self._expected_stop = False
        self._powered_off = False
        if snapshot is not None:
            await self._restore(conn, snapshot)
        else:
            await self._upload_files()
            disk = None
            if self.spec.disk:
                current: Any = self._overlay
                disk = str(current.path()) if keep_disk and current is not None else \
                    await self._make_overlay(self._files["disk"])
            nvram = None
            if self.spec.firmware_vars:  # this domain's own variable store, made by libvirt from the template
                assert self.pool is not None
                nvram = f"{await asyncio.to_thread(pool_target, self.pool)}/{self.domain_name}-VARS.fd"
            xml = domain_xml(self.spec, name=self.domain_name, domain_uuid=self.domain_uuid, title=self.title,
                             accel=self.accel, kernel=self._files.get("kernel"), initrd=self._files.get("initrd"),
                             disk=disk, firmware=self._files.get("firmware"),
                             firmware_vars=self._files.get("firmware_vars"), nvram=nvram)
            flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
            try:
                self._set_domain(await asyncio.to_thread(conn.createXML, xml, flags))
            except libvirt.libvirtError as exc:
                await self._drop_overlay()
                raise SerconError(f"libvirt host {display(self.uri)} would not start the guest: "
                                  f"{_first_line(exc)}") from exc
        self.hooks.on_powered_on(reason=reason, snapshot=snapshot.name if snapshot else None,
                                 domain=self.domain_name)
        await self._open_console(force=True)
        await self._call(self._domain().resume)
        return {}

    async def _restore(self, conn: libvirt.virConnect, snapshot: Snapshot) -> None:
        """The snapshot's save file, copied in the pool under this guest's domain name, restored paused."""
        assert self.pool is not None
        ref = json.loads(snapshot.state.read_text())
        pool = self.pool
        try:
            source = await asyncio.to_thread(pool.storageVolLookupByName, ref["volume"])
        except libvirt.libvirtError as exc:
            raise SnapshotError(f"snapshot {snapshot.name!r}: its state file {ref['volume']} is gone from pool "
                                f"{pool.name()!r} on {display(self.uri)}; it will be rebuilt") from exc
        copy_name = f"{self.domain_name}-restore.save"
        copy = None
        try:
            copy = await asyncio.to_thread(pool.storageVolLookupByName, copy_name)
            await asyncio.to_thread(copy.delete, 0)
        except libvirt.libvirtError:
            pass
        started = time.monotonic()
        try:
            created: Any = await asyncio.to_thread(
                pool.createXMLFrom, _volume_xml(copy_name, ref["size"], "raw"), source, 0)
            copy = created
            await asyncio.to_thread(self._rename_save_file, conn, created, ref)
            dxml = None
            if ref.get("disk"):  # a new overlay on the snapshot's frozen one
                frozen = await asyncio.to_thread(pool.storageVolLookupByName, ref["disk"])
                disk = await self._make_overlay(str(frozen.path()), "qcow2")
                dxml = with_disk(await asyncio.to_thread(conn.saveImageGetXMLDesc, created.path(), 0), disk)
            await asyncio.to_thread(conn.restoreFlags, created.path(), dxml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
            dom = await asyncio.to_thread(conn.lookupByName, self.domain_name)
            await asyncio.to_thread(dom.setMetadata, libvirt.VIR_DOMAIN_METADATA_TITLE, self.title, None, None,
                                    libvirt.VIR_DOMAIN_AFFECT_LIVE)
            self._set_domain(dom)
        except (libvirt.libvirtError, SnapshotError) as exc:
            raise SnapshotError(f"libvirt host {display(self.uri)} could not restore snapshot {snapshot.name!r}: "
                                f"{_first_line(exc)}; it will be rebuilt") from exc
        finally:
            if copy is not None:
                try:
                    await asyncio.to_thread(copy.delete, 0)
                except libvirt.libvirtError:
                    pass
        log.info("%s: restored %s in %.0f ms", self.name, snapshot.name, (time.monotonic() - started) * 1000)

    def _rename_save_file(self, conn: libvirt.virConnect, vol: libvirt.virStorageVol, ref: dict[str, Any]) -> None:
        length = ref["header"]
        data = bytearray()
        down = conn.newStream(0)
        vol.download(down, 0, length, 0)
        down.recvAll(_sink(data), None)
        down.finish()
        renamed = rename_save_header(bytes(data), (ref["domain_name"], ref["domain_uuid"]),
                                     (self.domain_name, self.domain_uuid))
        up = conn.newStream(0)
        vol.upload(up, 0, len(renamed), 0)
        up.send(renamed)
        up.finish()

    def _set_domain(self, dom: libvirt.virDomain) -> None:
        """The running domain (a snapshot save stops it, and a restore starts another under the same UUID)."""
        self.dom = dom

    @property
    def running(self) -> bool:
        return self.conn is not None and (self.dom is not None or self._powered_off)

    def _domain(self) -> libvirt.virDomain:
        if self.dom is None:
            state = "powered off" if self._powered_off else "not running"
            raise GuestNotRunning(f"guest {self.name} is {state} (domain {self.domain_name} on {display(self.uri)})")
        return self.dom

    async def _call(self, fn: Any, *args: Any) -> Any:
        """A libvirt call, in a thread; its error as ActionFailed (a vanished domain as GuestNotRunning)."""
        try:
            return await asyncio.to_thread(fn, *args)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID) and \
                    self.dom is None:
                raise GuestNotRunning(f"guest {self.name}: its domain is gone from {display(self.uri)}") from exc
            raise ActionFailed(f"libvirt ({display(self.uri)}): {_first_line(exc)}") from exc

    async def stop(self, graceful: bool = True) -> None:
        self._expected_stop = True
        self._powered_off = False
        self._close_console()
        if self._reclaim is not None:
            self._reclaim.cancel()
            self._reclaim = None
        dom, self.dom = self.dom, None
        if dom is not None:
            try:
                if graceful:
                    await asyncio.to_thread(dom.destroyFlags, libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
                else:
                    await asyncio.to_thread(dom.destroy)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    try:
                        await asyncio.to_thread(dom.destroy)
                    except libvirt.libvirtError:
                        pass
        await self._drop_overlay()
        await self._drop_nvram()

    async def close(self) -> None:
        """Stop, then let go of the host (the owner is ending)."""
        await self.stop()
        conn, self.conn = self.conn, None
        if conn is not None:
            for callback in self._callbacks:
                try:
                    conn.domainEventDeregisterAny(callback)
                except libvirt.libvirtError:
                    try:
                        libvirt_qemu.qemuMonitorEventDeregister(conn, callback)
                    except libvirt.libvirtError:
                        pass
            self._callbacks = []
            try:
                conn.unregisterCloseCallback()
                await asyncio.to_thread(conn.close)
            except libvirt.libvirtError:
                pass

    async def resume_after_poweroff(self, reason: str) -> None:
        """libvirt ends the domain once its guest has powered off: wait for that, then start it
        again (the same console, a new boot)."""
        deadline = time.monotonic() + 15
        while self.dom is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the lifecycle event clears it
        if self.dom is not None:  # libvirt kept it: end it ourselves
            await self.stop()
            self._expected_stop = False
        await self.power_on(reason, keep_disk=True)

    def exit_text(self) -> str:
        return self._last_stop or "unknown status"

    def info(self) -> dict[str, Any]:
        dom_id = None
        if self.dom is not None:
            try:
                dom_id = self.dom.ID()
            except libvirt.libvirtError:
                pass
        return {**super().info(), "host": display(self.uri), "domain": self.domain_name, "domain_id": dom_id}

    # -------------------------------------------------------------- console

    async def _open_console(self, force: bool) -> None:
        dom = self._domain()
        assert self.conn is not None
        stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else libvirt.VIR_DOMAIN_CONSOLE_SAFE
        try:
            await asyncio.to_thread(dom.openConsole, None, stream, flags)
        except libvirt.libvirtError as exc:
            raise ActionFailed(f"could not open COM1 of {self.domain_name} on {display(self.uri)}: "
                               f"{_first_line(exc)}") from exc
        stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                                | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_console, None)
        self._stream = stream

    def _close_console(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.eventRemoveCallback()
                stream.abort()
            except libvirt.libvirtError:
                pass

    def _on_console(self, stream: Any, events: int, opaque: object) -> None:
        while stream is self._stream:
            try:
                data = stream.recv(65536)
            except libvirt.libvirtError:
                data = b""
            if data == -2:  # nothing more for now
                return
            if not data:
                self._console_lost()
                return
            self.hooks.on_serial(data)

    def _console_lost(self) -> None:
        self._close_console()
        if self.dom is None or self._expected_stop:
            return
        self._background.add(asyncio.ensure_future(self._after_console_lost()))

    async def _after_console_lost(self) -> None:
        """The stream ended: the domain stopped (its lifecycle event says how), or, if it runs on,
        another client took COM1 over (`virsh console --force`)."""
        dom = self.dom
        for _ in range(50):  # a domain that is ending closes its console first: give libvirt time to say so
            await asyncio.sleep(0.1)
            if self.dom is not dom or self._expected_stop:
                return
        try:
            active = dom is not None and await asyncio.to_thread(dom.isActive)
        except libvirt.libvirtError:
            active = False
        if not active or self.dom is not dom or self._expected_stop or self._stream is not None:
            return
        self.hooks.record("serial_taken", host=display(self.uri), domain=self.domain_name,
                          detail="another client took COM1 over; the owner takes it back when it is free, and "
                                 "what the guest prints meanwhile is not in this log")
        self._reclaim = asyncio.ensure_future(self._take_console_back())

    async def _take_console_back(self) -> None:
        while self.dom is not None and not self._expected_stop and self._stream is None:
            await asyncio.sleep(1.0)
            try:
                await self._open_console(force=False)
            except (ActionFailed, GuestNotRunning):
                continue
            self.hooks.record("serial_back", host=display(self.uri), domain=self.domain_name)
        self._reclaim = None

    async def write_serial(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            stream = self._stream
            if stream is None:
                raise GuestNotRunning(f"COM1 of guest {self.name} is not connected (domain {self.domain_name})")
            try:
                sent = stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise ActionFailed(f"writing to COM1 of {self.domain_name} failed: {_first_line(exc)}") from exc
            if sent == -2:
                await asyncio.sleep(0.002)
                continue
            view = view[sent:]

    # -------------------------------------------------------------- events

    def _ours(self, dom: libvirt.virDomain) -> bool:
        try:
            return bool(dom.UUIDString() == self.domain_uuid)
        except libvirt.libvirtError:
            return False

    def _on_monitor_event(self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: str, seconds: int,
                          micros: int, details: str | None, opaque: object) -> None:
        if event in QEMU_EVENTS and self._ours(dom):
            try:
                data = json.loads(details) if details else {}
            except ValueError:
                data = {}
            self.hooks.on_qemu_event(event, data if isinstance(data, dict) else {})

    def _on_lifecycle(self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int,
                      opaque: object) -> None:
        if event != libvirt.VIR_DOMAIN_EVENT_STOPPED or not self._ours(dom):
            return
        log.info("%s: domain %s stopped, detail %s", self.name, dom.name(), detail)
        if self._saving and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return  # the save of a snapshot: the domain is restored at once
        how = STOP_DETAILS.get(detail, f"stopped ({detail})")
        self._last_stop = f"domain {how} on {display(self.uri)}"
        self.dom = None
        self._close_console()
        if self._expected_stop or (self._saving and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED):
            return
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
            # The guest powered off (SHUTDOWN came first); reset or restart starts it again, on the
            # same disk overlay (as a local QEMU keeps its disk across a restart).
            self._powered_off = True
            return
        self._last_stop = (f"its libvirt domain was {how} outside sercon" if detail == 1 else
                           f"its libvirt domain {how}")
        self.hooks.on_exit(self._last_stop, f"{self.domain_name} on {display(self.uri)}")

    # ------------------------------------------------------------ commands

    async def qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        dom = self._domain()
        request = json.dumps({"execute": command, **({"arguments": args} if args else {})})
        reply = await self._call(libvirt_qemu.qemuMonitorCommand, dom, request, 0)
        answer = json.loads(reply)
        if "error" in answer:
            error = answer["error"]
            raise ActionFailed(f"QMP {command} failed: {error.get('class')}: {error.get('desc')}")
        return answer.get("return")

    async def nmi(self) -> None:
        await self._call(self._domain().injectNMI, 0)

    async def reset(self) -> None:
        await self._call(self._domain().reset, 0)

    async def powerdown(self) -> None:
        await self._call(self._domain().shutdownFlags, libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    async def screenshot(self, path: Path) -> None:
        dom = self._domain()
        assert self.conn is not None
        stream = self.conn.newStream(0)
        data = bytearray()

        def take() -> str:
            mime = dom.screenshot(stream, 0, 0)
            stream.recvAll(_sink(data), None)
            stream.finish()
            return str(mime)

        mime = await self._call(take)
        png = bytes(data) if mime == "image/png" else ppm_to_png(bytes(data))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(png)

    # ------------------------------------------------------------ snapshots

    def hypervisor_id(self) -> str:
        conn = self.conn or connect(self.uri)
        version = conn.getVersion()
        return f"libvirt {display(self.uri)} QEMU {version // 1000000}.{version // 1000 % 1000}.{version % 1000}"

    async def save_state(self, tmp: Path, snapshot: str, key: str) -> dict[str, Any]:
        """`virDomainSaveFlags` into the pool (the domain stops), then restored at once under the
        same identity, so the guest carries on; `state.bin` here records where the file is.

        A disk guest's overlay, as the save left it, becomes the snapshot's (frozen: nothing writes
        to it again), and the guest carries on in a new overlay on top of it, as every guest later
        restored from the snapshot does."""
        if self.spec.firmware:
            raise ActionFailed(f"snapshots of UEFI guests on libvirt hosts are not supported yet ({self.name} "
                               f"on {display(self.uri)}): snapshot a BIOS or kernel guest, or run this one locally")
        dom = self._domain()
        assert self.pool is not None and self.conn is not None
        # A name of its own: the snapshot this one replaces deletes its own file when it is discarded.
        volume = f"snap-{snapshot}-{key}-{uuid.uuid4().hex[:8]}.save"
        path = f"{await asyncio.to_thread(pool_target, self.pool)}/{volume}"
        frozen = self._overlay if self.spec.disk else None
        self._saving = True
        self._close_console()
        try:
            await self._call(dom.saveFlags, path, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
            self.dom = None
            dxml = None
            if frozen is not None:
                self._overlay = None  # the snapshot's now; the guest goes on in an overlay on top of it
                disk = await self._make_overlay(str(frozen.path()), "qcow2")
                dxml = with_disk(await self._call(self.conn.saveImageGetXMLDesc, path, 0), disk)
            await self._call(self.conn.restoreFlags, path, dxml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
            self._set_domain(await self._call(self.conn.lookupByName, self.domain_name))
            await asyncio.to_thread(self.pool.refresh, 0)
            vol = await self._call(self.pool.storageVolLookupByName, volume)
            size = (await self._call(vol.info))[1]
            header = await asyncio.to_thread(self._header_length, vol)
        finally:
            await asyncio.sleep(0.05)  # the save's own stop event, if it is still on its way
            self._saving = False
            if self.dom is not None:
                await self._open_console(force=True)
                await self._call(self.dom.resume)
        ref = {"host": display(self.uri), "volume": volume, "size": size, "header": header,
               "domain_name": self.domain_name, "domain_uuid": self.domain_uuid,
               "disk": frozen.name() if frozen is not None else None}
        (tmp / "state.bin").write_text(json.dumps(ref))
        extra = {"host_disk": ref["disk"]} if frozen is not None else {}
        return {"ram": "host", "host_volume": volume, "host_size": size, **extra}

    def _header_length(self, vol: libvirt.virStorageVol) -> int:
        assert self.conn is not None
        data = bytearray()
        stream = self.conn.newStream(0)
        vol.download(stream, 0, SAVE_HEADER.size, 0)
        stream.recvAll(_sink(data), None)
        stream.finish()
        magic, version, data_len, *_ = SAVE_HEADER.unpack_from(bytes(data))
        if magic != SAVE_MAGIC or version != 2:
            raise SnapshotError(f"libvirt wrote a save file this sercon does not know (magic {magic!r}, "
                                f"version {version})")
        return int(SAVE_HEADER.size + data_len)

    def forget_snapshot(self, meta: dict[str, Any]) -> None:
        forget_host_snapshot(meta)


def forget_host_snapshot(meta: dict[str, Any]) -> None:
    """Delete a snapshot's save file and frozen disk from its libvirt host (best effort: the host may
    be gone; guests running on the disk keep it open)."""
    host = meta.get("host")
    volumes = [v for v in (meta.get("host_volume"), meta.get("host_disk")) if v]
    if not host or not volumes:
        return
    try:
        conn = libvirt.open(host)
        try:
            pool = conn.storagePoolLookupByName(pool_name())
            for volume in volumes:
                try:
                    pool.storageVolLookupByName(volume).delete(0)
                except libvirt.libvirtError as exc:
                    log.warning("could not delete %s on %s: %s", volume, display(host), _first_line(exc))
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        log.warning("could not reach %s to delete %s: %s", display(host), volumes, _first_line(exc))


def ppm_to_png(ppm: bytes) -> bytes:
    """A binary PPM (P6, what QEMU's screendump writes when PNG is not offered) as PNG."""
    import zlib

    parts = ppm.split(maxsplit=4)
    if len(parts) < 5 or parts[0] != b"P6":
        raise ActionFailed("the host sent a screenshot in a format sercon cannot convert (not PNG or PPM)")
    width, height, pixels = int(parts[1]), int(parts[2]), parts[4]
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
