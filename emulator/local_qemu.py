"""The local backend: QEMU as a child process of the owner, COM1 on two FIFOs, QMP on a socket pair.

The owner holds COM1 and QMP before QEMU starts, so no byte is emitted before someone reads it.
QEMU gets SIGKILL if the owner dies (no orphan keeps running). Guest RAM is a shared memfd, so a
snapshot copies it as it is instead of streaming it (see emulator/snapshots.py).

A guest restored in place is likely to be restored again (a test suite going back to one state
between tests), so after each such restore the backend loads a *spare*: a second QEMU for the same
snapshot, paused, with its own FIFOs, overlay and UEFI variables in `spare/` (numbered, and never
renamed: QEMU opens an image again by its name when a migration hands it back). The next restore
of that snapshot swaps processes instead of starting one: QEMU's own start-up (~35 ms here,
whatever its arguments) and the load leave the restore's path. The spare costs a paused QEMU's
memory; SERCON_RESTORE_SPARE=0 turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from . import accel as accel_mod
from . import firmware, settings, snapshots
from .backend import Backend
from .errors import ActionFailed, GuestNotRunning, SerconError, SnapshotError
from .pacing import BurstPacer
from .qemu_args import SERIAL_ID, find_qemu, qemu_args
from .trust import private_dir

if TYPE_CHECKING:
    from .snapshots import Snapshot

log = logging.getLogger("sercon.owner")

#: COM1's output FIFO is asked for this capacity (best effort: the kernel caps it at
#: fs.pipe-max-size and a user's total): room for a long burst while the owner is busy elsewhere.
COM1_PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031  # Linux's fcntl command; Python's fcntl module names it only from 3.10 on


#: A spare starts this long after the restore that asks for it: the restored guest's first
#: commands (which the new QEMU translates afresh, the slow part of a restore) go first.
SPARE_DELAY_S = 0.25


#: Extra QEMU options a spare may repeat: none opens, binds or locks anything on the host, so two
#: QEMUs of one guest can hold them at once. Any other (a chardev's socket path, a netdev's host
#: port, a drive) might be taken from the running guest by its spare: such a guest gets no spare.
SPARE_SAFE_OPTIONS = frozenset({
    "-boot", "-cpu", "-rtc", "-global", "-device", "-smbios", "-no-reboot", "-no-hpet", "-action", "-msg",
    "-overcommit", "-icount", "-k", "-usb", "-vga",
})


def spares_enabled(extra_args: list[str]) -> bool:
    """SERCON_RESTORE_SPARE=0 turns spares off; so do extra options that may hold a host resource."""
    if not settings.switch("SERCON_RESTORE_SPARE"):
        return False
    return all(arg in SPARE_SAFE_OPTIONS for arg in extra_args if arg.startswith("-"))


def com1_pacer() -> BurstPacer | None:
    """Output that streams (reads less than 20 ms apart, more than 4 KiB of them, faster than
    150 kB/s: a burst, never an echo or a command's short answer) is read at most every 5 ms, so
    the owner wakes, logs and sends once per few KiB instead of per few bytes. The FIFO holds the
    output meanwhile: QEMU never waits. SERCON_SERIAL_PACE=0 reads every byte as it comes.

    The gap is 20 ms, not 1: on a busy host QEMU's vCPU is descheduled for a few milliseconds
    now and then, and with a 1 ms gap each such pause ended the run, so the owner read the next
    4 KiB a few bytes at a time again (with 20 viewers on the gateway: 5x the owner's CPU)."""
    if not settings.switch("SERCON_SERIAL_PACE"):
        return None
    return BurstPacer(gap_s=0.02, min_bytes=4096, min_rate=150_000, hold_s=0.005)


class Com1:
    """COM1 of a local QEMU: two FIFOs in the guest's folder for QEMU's `pipe` chardev, `com1.out`
    (the UART's output) and `com1.in` (the guest's input).

    QEMU writes the UART's output a byte at a time. On a socket each byte is a buffer of its own
    (about 770 bytes of kernel memory) that the reader frees one by one, and each send wakes the
    reader: in a burst the owner spent more CPU in the kernel than QEMU spent running the guest,
    and the guest ran slower. A pipe appends each byte to a page and wakes the reader only when it
    was empty, so the owner takes what came while it was busy in one read.

    Both FIFOs are opened here, read-write and non-blocking, before QEMU starts: no byte is lost,
    and no end of file is seen when QEMU exits (the process watcher reports that)."""

    def __init__(self, folder: Path, on_data: Callable[[bytes], None], name: str = "com1") -> None:
        self.path = folder / name
        self._on_data = on_data
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = bytearray()
        self._drained: list[asyncio.Future[None]] = []
        self._reading = False
        self.pacer = com1_pacer()
        #: Reads of COM1's output so far, and the bytes they brought (`sercon info`: bytes per read).
        self.reads = 0
        self.read_bytes = 0
        fds: list[int] = []
        try:
            for suffix in (".in", ".out"):
                fifo = Path(f"{self.path}{suffix}")
                fifo.unlink(missing_ok=True)  # a previous power-on's: its unread bytes are not this boot's
                os.mkfifo(fifo, 0o600)
                os.chmod(fifo, 0o600)
                fds.append(os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        self._in, self._out = fds
        try:
            fcntl.fcntl(self._out, F_SETPIPE_SZ, COM1_PIPE_BYTES)
        except OSError:  # EPERM past the user's pipe quota: the default 64 KiB works too
            pass

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._resume()

    def deliver_to(self, on_data: Callable[[bytes], None]) -> None:
        """Before `start`: who gets COM1's bytes (a standby's QEMU changes hands before its first)."""
        self._on_data = on_data

    def _resume(self) -> None:
        if self._loop is not None and not self._reading:
            self._reading = True
            self._loop.add_reader(self._out, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._out, COM1_PIPE_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self.reads += 1
            self.read_bytes += len(data)
            self._on_data(data)
            hold = self.pacer.after_read(len(data), time.monotonic()) if self.pacer else 0.0
            if hold and self._loop is not None:  # a burst: the next read takes all that comes meanwhile
                self._loop.remove_reader(self._out)
                self._reading = False
                self._loop.call_later(hold, self._resume_run)

    def _resume_run(self) -> None:
        if self.pacer:
            self.pacer.resumed(time.monotonic())
        self._resume()

    def drain(self) -> None:
        """Everything QEMU wrote that is not read yet (QEMU exited)."""
        while True:
            try:
                data = os.read(self._out, COM1_PIPE_BYTES)
            except OSError:  # BlockingIOError: nothing left
                return
            if not data:
                return
            self._on_data(data)

    async def write(self, data: bytes) -> None:
        """Send `data` to the guest, after every earlier write; returns once all of it is in the
        FIFO (QEMU takes it as fast as the UART accepts it)."""
        loop = self._loop
        if loop is None:
            raise GuestNotRunning("COM1 is closed: the guest is not running")
        if not self._pending:
            try:
                data = data[os.write(self._in, data):]
            except BlockingIOError:
                pass
            if not data:
                return
            loop.add_writer(self._in, self._write_ready)
        self._pending += data
        done = loop.create_future()
        self._drained.append(done)
        await done

    def _write_ready(self) -> None:
        try:
            del self._pending[:os.write(self._in, self._pending)]
        except BlockingIOError:
            return
        if not self._pending:
            self._stop_writing(None)

    def _stop_writing(self, error: Exception | None) -> None:
        self._pending.clear()
        if self._loop is not None:
            self._loop.remove_writer(self._in)
        waiting, self._drained = self._drained, []
        for future in waiting:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def close(self) -> None:
        """Read what is left, stop, and remove the FIFOs (QEMU exited)."""
        if self._loop is not None:
            self.drain()
            self._loop.remove_reader(self._out)
            self._reading = False
            self._stop_writing(GuestNotRunning("QEMU exited before the guest took this input"))
            self._loop = None
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        for suffix in (".in", ".out"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


@dataclass
class _Launch:
    """A QEMU just spawned, with what is its alone."""

    proc: asyncio.subprocess.Process
    com1: Com1
    qmp_socket: socket.socket
    #: Its own disk overlay and copy of the UEFI variables, if the guest has them.
    overlay: Path | None
    vars_file: Path | None
    #: The snapshot RAM file it maps private (None: RAM in a shared memfd).
    ram_file: str | None
    #: The migration URI to load with `migrate-incoming` (None: nothing to load, or it loads by itself).
    incoming: str | None


def _identity(snapshot: Snapshot) -> tuple[Any, ...] | None:
    """What tells one saved state from another of the same name (saved again: new files)."""
    try:
        files = [snapshot.state, *([snapshot.ram] if snapshot.ram else [])]
        return (str(snapshot.folder), *((st.st_ino, st.st_mtime_ns, st.st_size) for st in map(os.stat, files)))
    except OSError:
        return None


class _Spare:
    """A QEMU loaded from a snapshot and paused, to take over the guest at the next restore of it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot.name
        self.identity = _identity(snapshot)
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.launch: _Launch | None = None
        self.qmp: QMPClient | None = None
        self.ready = False
        self.disposed = False


def _with_parent_death(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """QEMU's command and spawn options so that it gets SIGKILL if the owner dies (no orphan QEMU
    keeps running), in its own session. util-linux's `setpriv --pdeathsig` does it in the child
    before QEMU runs; a Python `preexec_fn` would do the same but makes the spawn fork the whole
    owner (7 against 2.5 ms, measured), and a restore waits for it. Without setpriv, that way."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *args], {"start_new_session": True}
    return args, {"preexec_fn": _die_with_parent}


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL if the owner dies, so no orphan QEMU keeps running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


class LocalQemu(Backend):
    kind = "local"
    serial_id = SERIAL_ID

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.qemu_log_path = self.folder / "qemu.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp_client: QMPClient | None = None
        self._com1: Com1 | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._expected_exit = False
        self.exit_status: int | None = None
        #: The snapshot RAM file the current QEMU maps private (None: RAM in a shared memfd).
        self._ram_file: str | None = None
        self._spare: _Spare | None = None
        self._launches = 0
        #: The current QEMU's disk overlay and UEFI variables (a spare's, once one took over).
        self._overlay: Path | None = None
        self._vars_file: Path | None = None
        #: A standby owner's folder, holding the files of the QEMU this guest took from it.
        self._standby_folder: Path | None = None

    # ------------------------------------------------------------ lifecycle

    async def power_on(self, reason: str, snapshot: Snapshot | None = None) -> dict[str, Any]:
        if self.proc is not None and self.proc.returncode is None:
            raise SerconError("QEMU is already running for this guest")
        if not self.accel:
            await self.choose_accel()
        if snapshot is not None:
            spare = await self._take_spare(snapshot)
            if spare is not None:
                return await self._adopt(spare, reason, snapshot)
        launch = await self._launch(reason, snapshot, self.folder)
        proc = launch.proc
        self._become_current(launch, reason, snapshot)
        self.qmp_client = QMPClient(self.name)
        try:
            await asyncio.wait_for(self.qmp_client.connect(launch.qmp_socket), timeout=30)
        except (TimeoutError, QMPError, OSError) as exc:
            await self.stop()
            raise SerconError(
                f"QEMU did not answer on QMP ({exc}); its own messages:\n{self._qemu_log_tail()}"
            ) from exc
        self._tasks.append(asyncio.create_task(self._pump_qmp_events(self.qmp_client), name="qmp-events"))
        if snapshot is not None:
            await self._load(self.qmp_client, launch)
            await self._wait_restored(snapshot.name)
        return {"qemu_pid": proc.pid}

    async def _launch(self, reason: str, snapshot: Snapshot | None, folder: Path, spare: bool = False) -> _Launch:
        """Spawn a QEMU for the spec (or `snapshot`) whose own files (COM1's FIFOs, the disk overlay,
        the UEFI variables) are in `folder`; QMP not yet connected, the state not yet loaded. A
        `spare` waits for `migrate-incoming` and stays paused after loading."""
        qemu = find_qemu()
        state_file = None
        ram_file = None
        backing: tuple[str, str | None] | None = (self.spec.disk, self.spec.disk_format) if self.spec.disk else None
        if snapshot is not None:
            state_file = snapshot.state.open("rb")
            ram_file = str(snapshot.ram) if snapshot.ram else None
            if (snapshot.folder / "disk.qcow2").exists():
                backing = (str(snapshot.folder / "disk.qcow2"), "qcow2")
        self._launches += 1  # a spare's files are numbered: each QEMU's stay its own until it exits
        suffix = "" if folder == self.folder else f"-{self._launches}"
        try:
            overlay = None
            if self.spec.disk and self.spec.disk_snapshot and backing is not None:
                overlay = await self._make_overlay(*backing, target=folder / f"overlay{suffix}.qcow2")
            vars_file = None
            if self.spec.firmware_vars:  # UEFI: this power-on's own copy of the variable store
                saved_vars = snapshot.folder / firmware.VARS_COPY if snapshot is not None else None
                vars_file = firmware.vars_copy(self.spec.firmware_vars, folder, saved_vars, f"efivars{suffix}.fd")
            com1 = Com1(folder, self.hooks.on_serial, f"com1{suffix}")
        except BaseException:
            if state_file is not None:
                state_file.close()
            raise
        qmp_ours, qmp_qemu = socket.socketpair()
        args = qemu_args(
            self.spec, accel=self.accel, serial_pipe=str(com1.path), qmp_fd=qmp_qemu.fileno(),
            name=self.name, qemu=qemu, disk_overlay=str(overlay) if overlay else None, ram_file=ram_file,
            firmware_vars=str(vars_file) if vars_file else None,
        )
        pass_fds = [qmp_qemu.fileno()]
        incoming = f"fd:{state_file.fileno()}" if state_file is not None else ""
        if state_file is not None:
            # With the RAM in a file, the stream needs x-ignore-shared set first: defer, then load.
            args += ["-incoming", "defer" if ram_file or spare else incoming]
            pass_fds.append(state_file.fileno())
        if spare:
            args += ["-S"]  # loaded, it stays paused whatever run state the snapshot was saved in
        with self.qemu_log_path.open("ab") as qlog:
            qlog.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {reason}: {' '.join(args)}\n".encode())
            qlog.flush()
            command, spawn = _with_parent_death(args)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, stdout=qlog, stderr=qlog, pass_fds=pass_fds, **spawn,
                )
            except BaseException:
                com1.close()  # no QEMU to use the FIFOs: do not leave them, or their descriptors, behind
                qmp_ours.close()
                if spare:  # nor a spare's files (a guest's own are made afresh by its next power-on)
                    for path in (overlay, vars_file):
                        if path is not None:
                            path.unlink(missing_ok=True)
                raise
            finally:
                qmp_qemu.close()
                if state_file is not None:
                    state_file.close()
        deferred = incoming if state_file is not None and (ram_file or spare) else None
        return _Launch(proc, com1, qmp_ours, overlay, vars_file, ram_file, deferred)

    def _become_current(self, launch: _Launch, reason: str, snapshot: Snapshot | None, **fields: Any) -> None:
        """`launch` is the guest's QEMU from now on: its files, its process watched, a new boot
        recorded (before its first byte or event), its COM1 read."""
        self._ram_file, self._overlay, self._vars_file = launch.ram_file, launch.overlay, launch.vars_file
        self.proc = launch.proc
        self._expected_exit = False
        self.exit_status = None
        self.hooks.on_powered_on(reason=reason, snapshot=snapshot.name if snapshot else None,
                                 qemu_pid=launch.proc.pid, **fields)
        launch.com1.start()
        self._com1 = launch.com1
        self._tasks = [asyncio.create_task(self._watch_process(launch.proc), name="process")]

    async def _load(self, qmp: QMPClient, launch: _Launch) -> None:
        """Start loading the snapshot into a QEMU that waits for it (`-incoming defer`)."""
        if launch.incoming is None:
            return  # it loads by itself (-incoming fd:N)
        await self._set_ignore_shared(launch.ram_file is not None, qmp)
        await self._execute(qmp, "migrate-incoming", {"uri": launch.incoming})

    # ------------------------------------------------------------ the spare

    async def keep_spare(self, snapshot: Snapshot) -> None:
        """After a restore in place: load the next QEMU for `snapshot` in the background, paused,
        so that the next restore of it is a swap."""
        await self._discard_spare()
        if not spares_enabled(self.spec.extra_args):
            return
        spare = _Spare(snapshot)
        spare.task = asyncio.create_task(self._start_spare(spare, snapshot), name="spare")
        self._spare = spare

    async def _start_spare(self, spare: _Spare, snapshot: Snapshot) -> None:
        await asyncio.sleep(SPARE_DELAY_S)
        spare.started = True
        try:
            spare.launch = launch = await self._launch(
                f"spare for restore {snapshot.name}", snapshot, private_dir(self.folder / "spare"), spare=True)
            spare.qmp = QMPClient(f"{self.name}-spare")
            await asyncio.wait_for(spare.qmp.connect(launch.qmp_socket), timeout=30)
            await self._load(spare.qmp, launch)
            deadline = time.monotonic() + 60
            while (await self._execute(spare.qmp, "query-status")).get("status") != "paused":
                if time.monotonic() > deadline:
                    raise ActionFailed("it did not load within 60 s")
                await asyncio.sleep(0.005)
            spare.ready = True
            log.info("%s: spare QEMU %d loaded from snapshot %s", self.name, launch.proc.pid, snapshot.name)
        except asyncio.CancelledError:
            await self._dispose(spare)
            raise
        except Exception as exc:  # a spare only saves time: whatever failed, restores go on
            # The next restore starts its QEMU as without a spare, and says why if that fails too.
            log.warning("%s: no spare QEMU for snapshot %s: %s", self.name, snapshot.name, exc)
            await self._dispose(spare)

    async def _take_spare(self, snapshot: Snapshot) -> _Spare | None:
        """The spare loaded from this very snapshot, alive, or None (any other spare is discarded)."""
        spare = self._spare
        if spare is None:
            return None
        same = spare.identity == _identity(snapshot)
        if same and spare.started and spare.task is not None and not spare.task.done():
            await asyncio.wait({spare.task})  # loading: waiting for it beats starting another
        if same and spare.ready and spare.launch is not None and spare.launch.proc.returncode is None:
            self._spare = None
            return spare
        await self._discard_spare()
        return None

    async def _discard_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if spare.task is not None and not spare.task.done():
            spare.task.cancel()
            await asyncio.wait({spare.task})
        await self._dispose(spare)

    async def _dispose(self, spare: _Spare) -> None:
        if spare.disposed:
            return
        spare.disposed = True
        if spare.qmp is not None:
            with contextlib.suppress(QMPError, EOFError, OSError):
                await spare.qmp.disconnect()
        launch = spare.launch
        if launch is None:
            return
        if launch.proc.returncode is None:
            launch.proc.kill()
        await launch.proc.wait()
        launch.com1.close()
        launch.qmp_socket.close()
        for path in (launch.overlay, launch.vars_file):
            if path is not None:
                path.unlink(missing_ok=True)

    async def _adopt(self, spare: _Spare, reason: str, snapshot: Snapshot) -> dict[str, Any]:
        """The spare becomes the guest's QEMU: its COM1 is read, its events reach the owner (none
        from before: they were its loading's), and it runs."""
        launch, qmp = spare.launch, spare.qmp
        assert launch is not None and qmp is not None
        launch.com1.deliver_to(self.hooks.on_serial)  # a standby's was another backend's
        self._become_current(launch, reason, snapshot, spare=True)
        self.qmp_client = qmp
        qmp.events.clear()
        self._tasks.append(asyncio.create_task(self._pump_qmp_events(qmp), name="qmp-events"))
        await self._wait_restored(snapshot.name)
        return {"qemu_pid": launch.proc.pid}

    async def close(self) -> None:
        await self._discard_spare()
        await self.stop()
        if self._standby_folder is not None:  # the standby's files: its QEMU, theirs only, has ended
            shutil.rmtree(self._standby_folder, ignore_errors=True)

    def take_standby(self, standby: LocalQemu) -> None:
        """This guest takes the spare a standby owner loaded before the guest was asked for (see
        emulator/standby.py): the next power-on from that snapshot is a swap. Its QEMU keeps its
        files (FIFOs, overlay) in the standby's folder, removed when this backend closes; its log
        is linked as this guest's qemu.log."""
        spare, standby._spare = standby._spare, None
        self._standby_folder = standby.folder
        if spare is None:
            return
        self._spare = spare
        try:
            link = self.qemu_log_path.with_name(f".{self.qemu_log_path.name}.standby")
            link.unlink(missing_ok=True)
            os.link(standby.qemu_log_path, link)
            link.replace(self.qemu_log_path)  # one file under both names: QEMU writes on into it
        except OSError as exc:  # its messages then stay in the standby's log
            log.warning("%s: the standby QEMU's log stays at %s (%s)", self.name, standby.qemu_log_path, exc)
            self.qemu_log_path = standby.qemu_log_path

    async def choose_accel(self) -> None:
        """KVM when it really boots guests here, else TCG (see emulator/accel.py). Only a probe
        goes to a thread: the hop alone costs a restore ~4 ms."""
        qemu = find_qemu()
        choice = accel_mod.known_choice(self.spec.accel, qemu)
        if choice is None:
            choice = await asyncio.to_thread(accel_mod.choose_accel, self.spec.accel, qemu, self.spec.kernel)
        self.accel, self.accel_reason = choice
        log.info("%s: accelerator %s (%s)", self.name, self.accel, self.accel_reason)

    @property
    def running(self) -> bool:
        return self.qmp_client is not None and self.proc is not None and self.proc.returncode is None

    async def stop(self, graceful: bool = True) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self._expected_exit = True
            if not graceful:
                proc.kill()
            elif self.qmp_client is not None:
                try:
                    await asyncio.wait_for(self.qmp_client.execute("quit"), timeout=5)
                except (TimeoutError, QMPError, EOFError, OSError):
                    pass
            try:
                await asyncio.wait_for(proc.wait(), timeout=5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.qmp_client is not None:
            try:
                await self.qmp_client.disconnect()
            except (QMPError, EOFError, OSError):
                pass  # QEMU already gone: qemu.qmp raises EOFError here
            self.qmp_client = None
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._com1 is not None and (proc is None or proc.returncode is not None):
            self._com1.close()  # what the process watcher does, had it run before being cancelled
            self._com1 = None
        for path in (self._overlay, self._vars_file):
            if path is not None and path.parent != self.folder:  # a spare's: nobody loads it again
                path.unlink(missing_ok=True)
        self._overlay = self._vars_file = None

    async def resume_after_poweroff(self, reason: str) -> None:
        # After a guest poweroff (-no-shutdown) QEMU refuses `cont` until a reset has happened.
        qmp = self._client()
        with qmp.listener("RESET") as listener:
            await self.qmp("system_reset")
            try:
                await asyncio.wait_for(listener.get(), timeout=10)
            except TimeoutError as exc:
                raise ActionFailed("no RESET event after system_reset") from exc
        await self.qmp("cont")

    def exit_text(self) -> str:
        code = self.exit_status
        if code is None:
            return "unknown status"
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def info(self) -> dict[str, Any]:
        com1 = self._com1
        return {**super().info(),
                "qemu_pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "com1_reads": com1.reads if com1 else 0, "com1_read_bytes": com1.read_bytes if com1 else 0,
                "com1_paced": bool(com1 and com1.pacer), "restore_spare": self._spare_info()}

    def _spare_info(self) -> dict[str, Any] | None:
        spare = self._spare
        if spare is None:
            return None
        pid = spare.launch.proc.pid if spare.launch is not None else None
        return {"snapshot": spare.snapshot, "ready": spare.ready, "qemu_pid": pid}

    # ------------------------------------------------------------- commands

    def _client(self) -> QMPClient:
        if not self.running or self.qmp_client is None:
            raise GuestNotRunning(f"guest {self.name} is not running")
        return self.qmp_client

    async def qmp(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return await self._execute(self._client(), command, args)

    @staticmethod
    async def _execute(qmp: QMPClient, command: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await asyncio.wait_for(qmp.execute(command, args), timeout=30)
        except (TimeoutError, QMPError, EOFError, OSError) as exc:
            raise ActionFailed(f"QMP {command} failed: {exc}") from exc

    async def write_serial(self, data: bytes) -> None:
        com1 = self._com1
        if com1 is None:
            raise GuestNotRunning(f"guest {self.name} is not running")
        await com1.write(data)

    async def screenshot(self, path: Path) -> None:
        await self.qmp("screendump", {"filename": str(path), "format": "png"})

    # ------------------------------------------------------------ snapshots

    def hypervisor_id(self) -> str:
        return snapshots.qemu_version(find_qemu())

    async def hypervisor(self) -> str:
        """Known already, but for the first owner after a QEMU upgrade: then `qemu --version`, in
        a thread (a restore waits ~4 ms for a thread hop alone)."""
        return snapshots.known_qemu_version(find_qemu()) or await super().hypervisor()

    async def save_state(self, tmp: Path, snapshot: str, key: str) -> dict[str, Any]:
        """Migration to `state.bin` with the guest stopped; a booted guest's RAM (a shared memfd)
        is left out of the stream and copied sparse to `ram.bin`. The guest carries on after."""
        await self.qmp("stop")
        shared_ram = self._ram_file is None  # booted: RAM in a memfd; restored: private file mapping
        try:
            target = tmp / "state.bin"
            await self._set_ignore_shared(shared_ram)
            await self.qmp("migrate", {"uri": f"exec:cat > '{target}'"})
            while True:
                status = await self.qmp("query-migrate")
                if status.get("status") == "completed":
                    break
                if status.get("status") in ("failed", "cancelled"):
                    raise ActionFailed(f"saving snapshot {snapshot!r} failed: {status.get('error-desc', status)}")
                await asyncio.sleep(0.01)
            overlay = self._overlay
            if self.spec.disk and not (self.spec.disk_snapshot and overlay is not None and overlay.exists()):
                raise ActionFailed(
                    f"snapshot of {self.name}: its disk is written in place; snapshots of disk guests need "
                    "disk_snapshot=True (writes to a throw-away overlay that the snapshot can keep)"
                )
            if overlay is not None and overlay.exists() and self.spec.disk:
                # Migration has completed: QEMU flushed and released the disk, so a copy is consistent.
                shutil.copyfile(overlay, tmp / "disk.qcow2")
            if self.spec.firmware_vars and self._vars_file is not None:  # they go with the state, as the disk does
                shutil.copyfile(self._vars_file, tmp / firmware.VARS_COPY)
            if shared_ram:  # the guest is still stopped: its RAM cannot change under the copy
                await asyncio.get_running_loop().run_in_executor(
                    None, snapshots.copy_sparse, self._ram_memfd(), tmp / snapshots.RAM_FILE)
        finally:
            await self.qmp("cont")
        return {}

    async def _set_ignore_shared(self, on: bool, qmp: QMPClient | None = None) -> None:
        """x-ignore-shared: migration leaves shared RAM (the memfd, or a snapshot's RAM file mapped
        private) out of the stream."""
        await self._execute(qmp or self._client(), "migrate-set-capabilities",
                            {"capabilities": [{"capability": "x-ignore-shared", "state": on}]})

    def _ram_memfd(self) -> Path:
        """QEMU's memfd holding the guest RAM, as /proc/PID/fd/N."""
        assert self.proc is not None
        fds = Path(f"/proc/{self.proc.pid}/fd")
        size = self.spec.memory_mb << 20
        for fd in fds.iterdir():
            try:  # QEMU names the memfd after the backend's type; the size tells the RAM's apart
                if os.readlink(fd).startswith("/memfd:memory-backend-memfd") and fd.stat().st_size == size:
                    return fd
            except OSError:
                continue
        raise ActionFailed(f"the RAM of {self.name} is not in a memfd (QEMU {self.proc.pid})")

    async def _make_overlay(self, backing: str, backing_format: str | None, target: Path) -> Path:
        """A fresh qcow2 overlay at `target`: the guest's writes never reach `backing`."""
        overlay = target
        overlay.unlink(missing_ok=True)
        if not backing_format:  # qemu-img insists on knowing it; qcow2 files say so in their first bytes
            with open(backing, "rb") as fh:
                backing_format = "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"
        command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format]
        proc = await asyncio.create_subprocess_exec(
            *command, str(overlay), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SerconError(f"qemu-img could not make an overlay on {backing} (apt-get install qemu-utils): "
                              f"{out.decode(errors='replace').strip()}")
        return overlay

    async def _wait_restored(self, snapshot: str) -> None:
        """QEMU loads the state, then runs the guest by itself; a bad stream makes it exit."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.returncode is not None:
                break
            try:
                status = await self.qmp("query-status")
            except ActionFailed:
                break
            if status.get("status") == "paused":
                # The state was saved from a stopped guest (save_state stops it first), and
                # QEMU keeps that run state after loading: start it.
                await self.qmp("cont")
                return
            if status.get("status") == "running":
                return
            # Loading: QEMU answers once it is done (it loads in its main loop), so a short
            # pause only spares it a busy stream of queries.
            await asyncio.sleep(0.001)
        await self.stop(graceful=False)
        raise SnapshotError(
            f"QEMU could not load snapshot {snapshot!r} (it is corrupt or foreign; it will be rebuilt):\n"
            f"{self._qemu_log_tail(4)}"
        )

    def _qemu_log_tail(self, lines: int = 10) -> str:
        try:
            text = self.qemu_log_path.read_text(errors="replace")
        except OSError:
            return "(no qemu.log)"
        return "\n".join(text.splitlines()[-lines:])

    # --------------------------------------------------------------- events

    async def _pump_qmp_events(self, qmp: QMPClient) -> None:
        try:
            async for event in qmp.events:
                data = event.get("data")
                self.hooks.on_qemu_event(str(event["event"]), data if isinstance(data, dict) else {})
        except (QMPError, EOFError, OSError, asyncio.CancelledError):
            return

    async def _watch_process(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if proc is not self.proc:
            return
        self.exit_status = code
        if self._com1 is not None:
            self._com1.close()
            self._com1 = None
        if self._expected_exit:
            return
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        self.hooks.on_exit(how, self._qemu_log_tail(5))
