"""Booting guests: qemu (TCG) command lines, VM slots shared by concurrent harness runs,
the CPU time a guest used, network roots served over NBD, a boot repeated once when the
emulator broke the guest, and the disks a boot gets (overlays, the HARNESS disk)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import heapq
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import common
from .common import CACHE, CONTEXT, guest_text, indent, run, say, stat
from .logs import clean_log
from .scenarios import POWER_DOWN

QEMU = "qemu-system-x86_64"
# vCPUs per guest. The suite boots EXITRD_VM_SLOTS guests at a time (default: one per
# host core), each with one vCPU, so vCPUs never outnumber cores (a TCG guest's clock runs
# in real time: an overcrowded host fires guest timeouts for nothing). A single boot
# (`run`, one slot) gets two.
VM_CPUS = int(os.environ.get("EXITRD_VM_CPUS", "0"))
# -cpu max without FSRM (fast short REP MOVSB): under qemu 10's TCG, bookworm's kernel
# (6.1) with it spins forever right after "LSM: Security Framework initializing" (seen
# 2026-12-03: both bookworm installer boots, 10 min of CPU; with fsrm=off, or -cpu qemu64,
# it boots on). trixie's 6.12 booted either way; erms=off has been there from the start.
QEMU_BASE = [
    QEMU, "-accel", "tcg,thread=multi", "-cpu", "max,erms=off,fsrm=off", "-m", "1024",
    "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
    "-nic", "none",
]
# Debian's defaults otherwise: no printk.devkmsg=on (it would hide /dev/kmsg's rate limit)
# and no panic=-1 (it would hide a PID 1 that dies: Debian's kernel then hangs).
CMDLINE_BASE = "console=ttyS0"
# UEFI boots (BootSpec.uefi): qemu's OVMF build from Debian's ovmf package, code and an
# empty variable store in one image: nothing persists between boots, so the stacks boot
# GRUB from the ESP's removable-media path.
OVMF = Path("/usr/share/ovmf/OVMF.fd")


@dataclasses.dataclass
class Boot:
    """What a boot left: its serial log, how it ended, its wall and qemu CPU time."""
    name: str
    log_path: Path
    wall: float
    timed_out: bool
    timeout: int
    returncode: int | None
    cpu: float = 0.0        # qemu's CPU time (user + system), s
    repeated: str = ""      # the emulator fault that cost an earlier attempt, if any
    ram: dict | None = None  # what ram.scan found in the RAM saved when it stopped
    iscsi: IscsiTraffic | None = None  # an iSCSI root: what the host's capture saw

    @property
    def text(self) -> str:
        return clean_log(self.log_path.read_bytes().decode("utf-8", "replace"))

    @property
    def powered_off(self) -> bool:
        return not self.timed_out and POWER_DOWN in self.text

    def why_not_off(self) -> str:
        if self.timed_out:
            return f"VM did not power off within {self.timeout} s"
        err = self.log_path.with_name(f"{self.name}.qemu-stderr")
        err_text = err.read_text(errors="replace").strip() if err.exists() else ""
        why = f"no '{POWER_DOWN}' in the log (qemu exit code {self.returncode})"
        if "Kernel panic" in self.text:
            why += "; the kernel panicked"
        return why + (f"; qemu said:\n{indent(err_text)}" if err_text else "")


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """One boot, whatever its drives: boot_fresh(), boot() and boot_now() take it. The
    files of the boot are rundir/NAME.* (serial.log, qemu-cmd, qemu-stderr)."""
    name: str
    rundir: Path
    kernel: Path | None      # None with uefi
    initrd: Path | None
    # Kernel command line (CMDLINE_BASE is added). With uefi, the arguments GRUB adds to
    # the installed system's own command line (root=, console=): boot_now writes them to
    # grub.cfg on the HARNESS disk, which the stack's GRUB sources as it boots.
    append: str
    timeout: int             # s; then qemu is killed
    nbd: Nbd | None = None   # set: the first drive is served over NBD (network root)
    fmt: str = "qcow2"       # format of the drives not named *.img or *.raw
    # Set: when the guest powers off or resets, qemu keeps it (paused, RAM intact) and the
    # whole guest RAM is saved to this file through QMP before qemu is told to quit.
    ram_dump: Path | None = None
    extra_args: tuple[str, ...] = ()   # more qemu arguments (Scenario.qemu_extra)
    nfs: Nfs | None = None   # set: the root is this tree, served over NFS (network root)
    iscsi: Iscsi | None = None  # set: the first drive is served over iSCSI (network root)
    http: Http | None = None  # set: a live system fetches its squashfs from the host (HTTP)
    uefi: bool = False       # boot through the firmware and the stack's own GRUB
    # Booted snapshots (tests/vm/snapshot.py): save the running guest's state to this file
    # once its serial log shows SNAPSHOT_POINT, then quit; or start from a saved state.
    snapshot_to: Path | None = None
    incoming: Path | None = None


def stack_spec(s, name: str, rundir: Path, kernel: Path, initrd: Path, extra: str,
               timeout: int, **kw) -> BootSpec:
    """A boot of scenario s's stack with these extra kernel arguments: qemu -kernel with
    the kernel and the initramfs given; on a UEFI stack (Scenario.uefi) its firmware and
    GRUB, which load the kernel and initramfs that the disk's /boot holds (the stage's
    saved initramfs is a copy of it) and add root= themselves."""
    if getattr(s, "builder", "") == "dracut":
        # dracut's initrd gives up on a missing root device after 180 s (its initqueue,
        # rd.retry) and systemd's device jobs after 90 s (rd.timeout): under emulation on
        # a starved host (qemu got 82 s of CPU in 420 s) the disk driver bound at 168 s
        # and the boot ended in dracut's emergency shell. (initramfs-tools waits 180 s
        # too, ROOTDELAY; not seen to run out so far.)
        extra = f"{extra} rd.retry=600 rd.timeout=600"
    if s.uefi:
        return BootSpec(name, rundir, None, None, extra.strip(), timeout, uefi=True, **kw)
    return BootSpec(name, rundir, kernel, initrd, f"root={s.root} ro {extra}".strip(),
                    timeout, **kw)


# TCG guests run their clocks in real time: crowd the host's cores with vCPUs and guest
# timeouts (systemd's, exitrd's own deadline) fire for nothing. Boots from concurrent
# harness invocations take one of EXITRD_VM_SLOTS (default: the core count) slots.
VM_SLOTS = int(os.environ.get("EXITRD_VM_SLOTS", str(os.cpu_count() or 1)))
PARALLEL = False   # set by runner.suite when it boots several guests at a time


def vm_cpus() -> int:
    return VM_CPUS or (1 if PARALLEL else 2)


# Within one harness process (the parallel suite), slots go by priority: the thread
# whose CONTEXT.priority is lowest (the suite's order: the longest cold chains first)
# boots next, not whichever thread polls first.
_SLOT_QUEUE = threading.Condition()
_SLOT_WAITING: list[tuple[int, int]] = []   # heap of (priority, arrival)
_SLOT_ARRIVALS = itertools.count()
_SLOTS_IN_USE = [0]


@contextlib.contextmanager
def vm_slot(name: str):
    ticket = (getattr(CONTEXT, "priority", 1 << 30), next(_SLOT_ARRIVALS))
    with _SLOT_QUEUE:
        heapq.heappush(_SLOT_WAITING, ticket)
        while _SLOT_WAITING[0] != ticket or _SLOTS_IN_USE[0] >= max(1, VM_SLOTS):
            _SLOT_QUEUE.wait(1)
        heapq.heappop(_SLOT_WAITING)
        _SLOTS_IN_USE[0] += 1
        _SLOT_QUEUE.notify_all()
    try:
        with vm_slot_across_processes(name):
            yield
    finally:
        with _SLOT_QUEUE:
            _SLOTS_IN_USE[0] -= 1
            _SLOT_QUEUE.notify_all()


# Across processes (a suite beside `prepare`, or a `run` by hand beside a suite), slots go
# in the order the boots started waiting: each waiting boot leaves a file named by that
# time in this folder, and tries for a slot only while no live process has an older one.
# (Before: whichever polled first; a suite's own threads took every slot its runs freed.)
SLOT_QUEUE = ".vm-slot-queue"


def _older_waiter(mine: Path) -> bool:
    for f in mine.parent.iterdir():
        if f.name >= mine.name:
            continue
        try:
            os.kill(int(f.name.split("-")[1]), 0)
        except (ProcessLookupError, ValueError, IndexError):
            f.unlink(missing_ok=True)   # left by a process that is gone
            continue
        except PermissionError:
            pass
        return True
    return False


@contextlib.contextmanager
def vm_slot_across_processes(name: str):
    queue = CACHE / SLOT_QUEUE
    queue.mkdir(parents=True, exist_ok=True)
    mine = queue / f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}"
    mine.touch()
    waited = False
    try:
        while True:
            for i in range(max(1, VM_SLOTS)) if not _older_waiter(mine) else ():
                f = open(CACHE / f".vm-slot-{i}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                mine.unlink(missing_ok=True)
                try:
                    yield
                finally:
                    f.close()
                return
            if not waited:
                say(f"boot {name}: waiting for one of {VM_SLOTS} VM slots (other harness runs)")
                waited = True
            time.sleep(0.5)
    finally:
        mine.unlink(missing_ok=True)


def boot(spec: BootSpec, drives: list[Path]) -> Boot:
    with vm_slot(spec.name):
        if spec.nfs is not None:
            with nfs_export(spec.nfs, spec.rundir, spec.name) as (net, extra, prefix):
                return boot_now(dataclasses.replace(spec, append=f"{spec.append} {extra}"),
                                drives, net, prefix)
        if spec.iscsi is not None:
            with iscsi_export(drives[0], spec.rundir, spec.name, spec.iscsi) as (
                    net, extra, prefix, pcap):
                b = boot_now(dataclasses.replace(spec, append=f"{spec.append} {extra}"),
                             drives[1:], net, prefix)
            b.iscsi = iscsi_traffic(pcap)
            pcap.unlink(missing_ok=True)
            return b
        if spec.http is not None:
            with http_export(spec.http, spec.rundir, spec.name) as (net, extra, prefix):
                return boot_now(dataclasses.replace(spec, append=f"{spec.append} {extra}"),
                                drives, net, prefix)
        if spec.nbd is None:
            return boot_now(spec, drives)
        # The first drive is served over the network instead of being attached.
        with nbd_export(drives[0], spec.rundir, spec.name, spec.nbd) as (net, extra):
            return boot_now(dataclasses.replace(spec, append=f"{spec.append} {extra}"),
                            drives[1:], net)


# Network roots (Scenario.nbd_root): qemu-nbd serves the image on 127.0.0.1 only, at a
# free port; the guest's user-mode network is restricted (no route to any real network)
# and has one forward: connections to NBD_GUEST_ADDR:NBD_GUEST_PORT start a socat on the
# host that relays them to that port. The initramfs (nbd-client's local-top script)
# connects with nbdroot= after ip=dhcp (qemu's built-in DHCP server).
NBD_GUEST_ADDR = "10.0.2.100"
NBD_GUEST_PORT = 10809
NBD_EXPORT = "root"


@dataclasses.dataclass(frozen=True)
class Nfs:
    export: Path                 # the root file system tree the guest mounts
    stop_on: str | None = None   # freeze the server once the serial log shows this line


@dataclasses.dataclass(frozen=True)
class Nbd:
    stop_on: str | None = None   # stop answering once the serial log shows this line


@contextlib.contextmanager
def frozen_at(line: str | None, rundir: Path, name: str, pid, what: str):
    """While in the block: freeze a server (SIGSTOP; pid() gives its pid) once boot
    `name`'s serial log shows `line`. Frozen, not killed: no answer and no FIN or reset
    reaches the guest, its requests stay in flight unanswered, as with a server that lost
    power or a cut cable. The moment is written to NAME.WHAT-stopped in the run folder."""
    import threading
    if not line:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        serial = rundir / f"{name}.serial.log"
        while not stop.wait(0.3):
            try:
                text = serial.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            target = pid()
            if line in text and target:
                os.kill(target, signal.SIGSTOP)
                (rundir / f"{name}.{what.lower()}-stopped").write_text(f"{time.time():.3f}\n")
                say(f"boot {name}: host: froze the {what} server (SIGSTOP) at {line!r}")
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


@contextlib.contextmanager
def nbd_export(image: Path, rundir: Path, name: str, nbd: Nbd):
    """Serve `image` over NBD for one boot; yields (qemu network args, kernel args)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fmt = "raw" if image.suffix in (".img", ".raw") else "qcow2"
    log = open(rundir / f"{name}.qemu-nbd.log", "wb")
    srv = subprocess.Popen(["qemu-nbd", "--bind", "127.0.0.1", "--port", str(port),
                            "--export-name", NBD_EXPORT, "--format", fmt, "--persistent",
                            "--shared", "4", "--cache", "unsafe", str(image)],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    t0 = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if srv.poll() is not None or time.monotonic() - t0 > 20:
                srv.kill()
                log.close()
                raise SystemExit(f"qemu-nbd for {image} did not start; see {log.name}")
            time.sleep(0.2)
    say(f"boot {name}: {image.name} served over NBD on 127.0.0.1:{port}")
    net = ["-nic", f"user,model=virtio-net-pci,restrict=on,guestfwd=tcp:{NBD_GUEST_ADDR}:"
           f"{NBD_GUEST_PORT}-cmd:socat -lf /dev/null - TCP:127.0.0.1:{port}"]
    extra = (f"nbdroot={NBD_GUEST_ADDR}:{NBD_GUEST_PORT}/{NBD_EXPORT} ip=dhcp")
    try:
        with frozen_at(nbd.stop_on, rundir, name, lambda: srv.pid, "NBD"):
            yield net, extra
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        log.close()


# NFS roots (Scenario.nfs_root): nfs-ganesha (a user-space NFS server, FSAL_VFS) and
# rpcbind serve the tree, and qemu runs beside them in a network namespace of their own
# whose only interface is its loopback: the guest's user-mode network reaches the servers
# at 10.0.2.2 (slirp's address for the host's loopback, here the namespace's), and
# nothing is reachable from or to the host's network. initramfs-tools mounts the root with
# klibc's nfsmount (NFSv3 over TCP: portmapper, mountd, nfsd). A private mount namespace
# gives rpcbind its own /run (its socket, no clash with a system rpcbind).
NFS_SERVER_ADDR = "10.0.2.2"
GANESHA_CONF = """NFS_CORE_PARAM {{
    Protocols = 3;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    NFS_Port = 2049;
    MNT_Port = 20048;
}}
NFSv4 {{ Graceless = true; RecoveryRoot = {recovery}; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = /root;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP, UDP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
"""


def pid_in(d: Path, what: str) -> int | None:
    """The pid a server's launcher wrote to d/<what>.pid, or None."""
    try:
        return int((d / f"{what}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_servers(d: Path, names: tuple[str, ...], last: signal.Signals) -> None:
    """Ends each server whose pid is in d/<name>.pid: SIGCONT first (a frozen one would
    not act on the signal), then `last`."""
    for what in names:
        pid = pid_in(d, what)
        if pid:
            for sig in (signal.SIGCONT, last):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break


# Runs in the new namespaces, then becomes qemu ("$@"): the servers' pids go to files in
# the run folder, from where the harness freezes (fault runs) and ends them.
NFS_LAUNCHER = """set -eu
ip link set lo up
mount -t tmpfs -o mode=0755 exitrd-nfs-run /run
rpcbind -f -w & echo $! >"$NFS_DIR/rpcbind.pid"
i=0
until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "rpcbind did not start" >&2; exit 1; }; sleep 0.1
done
ganesha.nfsd -F -f "$NFS_DIR/ganesha.conf" -L "$NFS_DIR/ganesha.log" -N NIV_EVENT \
    -p "$NFS_DIR/ganesha.pid" & echo $! >"$NFS_DIR/ganesha.pid2"
i=0
until rpcinfo -p 127.0.0.1 2>/dev/null | grep -q mountd; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "nfs-ganesha did not start" >&2; exit 1; }; sleep 0.1
done
exec "$@"
"""


@contextlib.contextmanager
def nfs_export(nfs: Nfs, rundir: Path, name: str):
    """Serve nfs.export over NFSv3 for one boot; yields (qemu network args, kernel args,
    the command prefix that starts the servers and then qemu in their namespaces)."""
    d = rundir / f"{name}.nfs"
    d.mkdir(exist_ok=True)
    (d / "recovery").mkdir(exist_ok=True)
    (d / "ganesha.conf").write_text(GANESHA_CONF.format(export=nfs.export,
                                                        recovery=d / "recovery"))
    (d / "launcher.sh").write_text(NFS_LAUNCHER)
    prefix = ["unshare", "--net", "--mount", "--propagation", "private",
              "env", f"NFS_DIR={d}", "sh", str(d / "launcher.sh")]

    say(f"boot {name}: {nfs.export} served over NFSv3 by nfs-ganesha (log {d}/ganesha.log)")
    # rw: mounted read-write by the initramfs, as diskless machines run (no fstab entry
    # for / that systemd would remount it by).
    # noacl: without the NFSACL side protocol, whose SETACL nfs-ganesha 4.3 fails ("Bad
    # xdr_free for NFSACL_SETACL": every chmod on the root was an I/O error).
    extra = f"boot=nfs nfsroot={NFS_SERVER_ADDR}:{nfs.export},noacl ip=dhcp rw"
    try:
        with frozen_at(nfs.stop_on, rundir, name, lambda: pid_in(d, "ganesha"), "NFS"):
            yield ["-nic", "user,model=virtio-net-pci"], extra, prefix
    finally:
        stop_servers(d, ("ganesha", "rpcbind"), signal.SIGKILL)


# iSCSI roots (Scenario.iscsi_root): tgt's user-space target (tgtd) serves the first
# drive as LUN 1 of ISCSI_IQN, in a network namespace shared only with qemu, as the NFS
# servers are (10.0.2.2 is the namespace's loopback to the guest). tgtd serves a regular
# file, and the drive is a qcow2 overlay: qemu-storage-daemon exports it as a raw file
# through FUSE (in the namespace's private /run), so the guest's writes land in the
# overlay as with every other drive. open-iscsi's local-top script logs in with
# iscsistart (iscsi_target_name=, iscsi_target_ip=, after ip=dhcp).
# The guest's network traffic is captured (filter-dump, each frame cut at ISCSI_SNAPLEN:
# the headers and a 48-byte iSCSI basic header segment fit) so that the host can tell
# whether the target got a Logout Request and answered it: iscsi_traffic().
ISCSI_IQN = "iqn.2026-12.org.exitrd.test:root"
ISCSI_PORT = 3260
ISCSI_SNAPLEN = 192
ISCSI_LAUNCHER = """set -eu
ip link set lo up
mount -t tmpfs -o mode=0755 exitrd-iscsi-run /run
: >/run/lun1.raw
qemu-storage-daemon --daemonize --pidfile "$ISCSI_DIR/qsd.pid" \\
    --blockdev "driver=$ISCSI_FMT,node-name=lun1,file.driver=file,file.filename=$ISCSI_IMAGE,cache.direct=off" \\
    --export type=fuse,id=lun1,node-name=lun1,mountpoint=/run/lun1.raw,writable=on
tgtd -f --iscsi portal=0.0.0.0:3260 >"$ISCSI_DIR/tgtd.log" 2>&1 & echo $! >"$ISCSI_DIR/tgtd.pid"
i=0
until tgtadm --lld iscsi --op show --mode sys >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "tgtd did not start" >&2; exit 1; }; sleep 0.1
done
tgtadm --lld iscsi --op new --mode target --tid 1 -T "$ISCSI_IQN"
tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b /run/lun1.raw
tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL
exec "$@"
"""


@dataclasses.dataclass(frozen=True)
class Iscsi:
    stop_on: str | None = None   # freeze the target once the serial log shows this line


@contextlib.contextmanager
def iscsi_export(image: Path, rundir: Path, name: str, iscsi: Iscsi):
    """Serve `image` as an iSCSI LUN for one boot; yields (qemu network args, kernel args,
    the command prefix that starts the servers and then qemu, the capture's path)."""
    d = rundir / f"{name}.iscsi"
    d.mkdir(exist_ok=True)
    (d / "launcher.sh").write_text(ISCSI_LAUNCHER)
    fmt = "raw" if image.suffix in (".img", ".raw") else "qcow2"
    prefix = ["unshare", "--net", "--mount", "--propagation", "private",
              "env", f"ISCSI_DIR={d}", f"ISCSI_IMAGE={image}", f"ISCSI_FMT={fmt}",
              f"ISCSI_IQN={ISCSI_IQN}", "sh", str(d / "launcher.sh")]
    pcap = d / "guest.pcap"
    net = ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
           "-object", f"filter-dump,id=dump0,netdev=net0,file={pcap},maxlen={ISCSI_SNAPLEN}"]
    extra = (f"ip=dhcp iscsi_target_name={ISCSI_IQN} iscsi_target_ip={NFS_SERVER_ADDR} "
             f"iscsi_target_port={ISCSI_PORT}")

    say(f"boot {name}: {image.name} served as an iSCSI LUN by tgtd (log {d}/tgtd.log)")
    try:
        with frozen_at(iscsi.stop_on, rundir, name, lambda: pid_in(d, "tgtd"), "iSCSI"):
            yield net, extra, prefix, pcap
    finally:
        stop_servers(d, ("tgtd", "qsd"), signal.SIGTERM)
        # qemu-storage-daemon flushes the overlay as it ends (SIGTERM); the FUSE mount
        # went with the namespace.
        t0 = time.monotonic()
        while (pid := pid_in(d, "qsd")) and time.monotonic() - t0 < 20:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


# Live systems fetched over the network (Scenario.live_fetch): live-boot's fetch= makes
# the initramfs configure the interface itself (klibc's ipconfig, DHCP from slirp), mount
# a ramfs on /run/live/medium, download live/filesystem.squashfs into it with busybox
# wget and loop-mount it from there as from a medium: the whole squashfs stays in RAM.
# Python's http.server serves the stage's copy of the squashfs, started with qemu in a
# network namespace of their own as the NFS servers are (10.0.2.2 is the namespace's
# loopback to the guest; nothing else is reachable either way).
HTTP_PORT = 8000
HTTP_FETCHED = "live/filesystem.squashfs"   # below Http.root; the URL's path
HTTP_LAUNCHER = """set -eu
ip link set lo up
"$HTTP_PYTHON" -m http.server --bind 127.0.0.1 --directory "$HTTP_ROOT" "$HTTP_PORT" \\
    >"$HTTP_DIR/http.log" 2>&1 & echo $! >"$HTTP_DIR/http.pid"
i=0
until "$HTTP_PYTHON" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \\
        "$HTTP_PORT" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 100 ] || { echo "http.server did not start" >&2; exit 1; }; sleep 0.1
done
exec "$@"
"""


@dataclasses.dataclass(frozen=True)
class Http:
    root: Path   # the folder served; its HTTP_FETCHED is what the guest fetches


@contextlib.contextmanager
def http_export(http: Http, rundir: Path, name: str):
    """Serve http.root over HTTP for one boot; yields (qemu network args, kernel args, the
    command prefix that starts the server and then qemu in their network namespace)."""
    d = rundir / f"{name}.http"
    d.mkdir(exist_ok=True)
    (d / "launcher.sh").write_text(HTTP_LAUNCHER)
    prefix = ["unshare", "--net", "env", f"HTTP_DIR={d}", f"HTTP_ROOT={http.root}",
              f"HTTP_PORT={HTTP_PORT}", f"HTTP_PYTHON={sys.executable}", "sh",
              str(d / "launcher.sh")]
    extra = f"fetch=http://{NFS_SERVER_ADDR}:{HTTP_PORT}/{HTTP_FETCHED}"
    say(f"boot {name}: {http.root / HTTP_FETCHED} served over HTTP by Python's http.server "
        f"(log {d}/http.log)")
    try:
        yield ["-nic", "user,model=virtio-net-pci"], extra, prefix
    finally:
        stop_servers(d, ("http",), signal.SIGKILL)


@dataclasses.dataclass
class IscsiTraffic:
    """What the host's capture of an iSCSI root's boot shows: the iSCSI PDUs between the
    guest and the target that sat alone in a TCP segment with no data segment (as logouts
    do), in order; each (seconds since the capture began, direction, opcode, byte)."""
    pdus: list[tuple[float, str, int, int]]
    segments: int         # TCP segments with an iSCSI payload, both ways
    error: str = ""

    def logout(self) -> str | None:
        """The guest's last Logout Request and the target's answer to it, described,
        if the target answered; else None."""
        req = [i for i, p in enumerate(self.pdus) if p[1] == "to-target" and p[2] == 0x06]
        if not req:
            return None
        t, _, _, reason = self.pdus[req[-1]]
        for t2, way, op, response in self.pdus[req[-1] + 1:]:
            if way == "to-guest" and op == 0x26:
                return (f"Logout Request (reason {reason}) at {t:.1f} s, Logout Response "
                        f"{response} ({'closed successfully' if response == 0 else 'refused'})"
                        f" {t2 - t:.3f} s later")
        return None

    def describe(self) -> str:
        if self.error:
            return self.error
        ops = [f"{p[1]}:0x{p[2]:02x}" for p in self.pdus[-6:]]
        return f"{self.segments} iSCSI segments captured; the last lone PDUs: {ops}"


def iscsi_traffic(pcap: Path) -> IscsiTraffic:
    """Reads the capture of iscsi_export: pcap (little-endian, Ethernet), IPv4 and TCP to
    or from port ISCSI_PORT. A lone PDU is a segment whose payload is exactly one 48-byte
    basic header segment with no additional header and no data (TotalAHSLength and
    DataSegmentLength zero): what a Logout Request and its Response are. Opcodes without
    the immediate bit; the byte kept is the Logout Request's reason code (byte 1, without
    the final bit) or the Logout Response's response (byte 2)."""
    import struct
    try:
        data = pcap.read_bytes()
    except OSError as e:
        return IscsiTraffic([], 0, f"no capture: {e}")
    if len(data) < 24 or data[:4] != b"\xd4\xc3\xb2\xa1":
        return IscsiTraffic([], 0, f"{pcap}: not a little-endian pcap file")
    pdus, segments, pos, first = [], 0, 24, None
    while pos + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        first = first if first is not None else sec + usec / 1e6
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 0x0f) * 4
        total = struct.unpack_from(">H", frame, 16)[0]
        tcp = 14 + ihl
        if len(frame) < tcp + 20:
            continue
        sport, dport = struct.unpack_from(">HH", frame, tcp)
        if ISCSI_PORT not in (sport, dport):
            continue
        off = (frame[tcp + 12] >> 4) * 4
        length = total - ihl - off
        if length <= 0:
            continue
        segments += 1
        bhs = frame[tcp + off:tcp + off + 48]
        if length != 48 or len(bhs) < 48 or bhs[4:8] != b"\0\0\0\0":
            continue
        op = bhs[0] & 0x3f
        way = "to-target" if dport == ISCSI_PORT else "to-guest"
        byte = bhs[1] & 0x7f if op == 0x06 else bhs[2]
        pdus.append((sec + usec / 1e6 - first, way, op, byte))
    return IscsiTraffic(pdus, segments)


def boot_now(spec: BootSpec, drives: list[Path], net: list[str] | None = None,
             prefix: list[str] | None = None) -> Boot:
    name, rundir, timeout = spec.name, spec.rundir, spec.timeout
    log_path = rundir / f"{name}.serial.log"
    base = list(QEMU_BASE) + ["-smp", str(vm_cpus())]
    if net is not None:
        i = base.index("-nic")
        base[i:i + 2] = net   # in place of "-nic none"
    if spec.uefi and spec.incoming is None:
        # GRUB's arguments for this boot; a restored guest (spec.incoming) is past GRUB.
        harness = [d for d in drives if d.name.startswith("harness")]
        if len(harness) != 1:
            raise SystemExit(f"boot {name}: a UEFI boot needs one HARNESS disk, got {drives}")
        grub_args(harness[0], spec.append)
    if spec.uefi:
        cmd = base + ["-bios", str(OVMF), "-serial", f"file:{log_path}"]
    else:
        cmd = base + [
            "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
            "-append", f"{spec.append} {CMDLINE_BASE}",
            "-serial", f"file:{log_path}",
        ]
    for d in drives:
        f = "raw" if d.suffix in (".img", ".raw") else spec.fmt
        cmd += ["-drive", f"file={d},if=virtio,format={f},cache=unsafe,discard=unmap"]
    cmd += list(spec.extra_args)
    qmp_path = rundir / f"{name}.qmp"
    if spec.incoming is not None:
        cmd += ["-incoming", f"exec:cat {spec.incoming}"]
    if spec.ram_dump is not None:
        # Power-off and reset both end with the guest stopped, not gone: its RAM is what
        # an attacker with the machine (or a reboot into their stick) would find.
        cmd.remove("-no-reboot")
        cmd += ["-action", "reboot=shutdown,shutdown=pause"]
    if spec.snapshot_to or spec.incoming or spec.ram_dump:
        cmd += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    cmd = (prefix or []) + cmd
    (rundir / f"{name}.qemu-cmd").write_text(" ".join(cmd) + "\n")
    say(f"boot {name}: {log_path} (limit {timeout} s)")
    t0 = time.monotonic()
    with open(rundir / f"{name}.qemu-stderr", "wb") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        timed_out, status, cpu, polled = False, None, 0.0, 0.0
        # A restored guest was saved stopped (save_state) and comes up paused.
        resumed = spec.incoming is None
        while status is None:
            # wait4, not wait: it also gives the child's CPU time, which tells how much of
            # the host the guest used (a parallel suite's throughput depends on it).
            pid, st, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                status, cpu = st, ru.ru_utime + ru.ru_stime
                p.returncode = os.waitstatus_to_exitcode(st)
            elif time.monotonic() - t0 > timeout and not timed_out:
                timed_out = True
                p.kill()
            elif not resumed and time.monotonic() - polled > 0.2:
                polled = time.monotonic()
                resumed = resume_restored(qmp_path)
            elif (spec.ram_dump is not None and time.monotonic() - polled > 1.0
                  and not spec.ram_dump.exists()):
                polled = time.monotonic()
                if guest_stopped(qmp_path):
                    save_ram(qmp_path, spec.ram_dump)
            elif (spec.snapshot_to is not None and time.monotonic() - polled > 1.0
                  and not spec.snapshot_to.exists()):
                polled = time.monotonic()
                try:
                    text = log_path.read_bytes().decode("utf-8", "replace")
                except OSError:
                    text = ""   # qemu has not opened it yet
                if SNAPSHOT_POINT in text:
                    save_state(qmp_path, spec.snapshot_to)
            else:
                time.sleep(0.2)
    b = Boot(name, log_path, time.monotonic() - t0, timed_out, timeout, p.returncode, cpu)
    log_path.touch()
    state = f"VM did not power off within {timeout} s" if timed_out else "exited"
    say(f"boot {name}: {state} after {b.wall:.0f} s (qemu CPU {cpu:.0f} s, {vm_cpus()} vCPU)")
    return b


# --------------------------------------------------------------------------- QMP

def qmp(path: Path, *commands: dict) -> list[dict]:
    """Runs QMP commands on qemu's monitor socket; returns their answers (events skipped)."""
    import socket
    answers = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(str(path))
        f = sock.makefile("rwb")

        def answer() -> dict:
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    return msg
        json.loads(f.readline())   # the greeting
        for c in ({"execute": "qmp_capabilities"},) + commands:
            f.write(json.dumps(c).encode() + b"\n")
            f.flush()
            answers.append(answer())
    return answers[1:]


def guest_stopped(path: Path) -> bool:
    """True once the guest has powered off or reset (qemu keeps it, paused)."""
    if not path.exists():
        return False
    try:
        (status,) = qmp(path, {"execute": "query-status"})
    except (OSError, ValueError):
        return False
    return status.get("return", {}).get("status") in ("shutdown", "paused", "guest-panicked")


def resume_restored(path: Path) -> bool:
    """Lets a guest restored from a booted snapshot run once its state is loaded (it was
    saved stopped, so it arrives paused). True once it runs."""
    if not path.exists():
        return False
    try:
        (status,) = qmp(path, {"execute": "query-status"})
        state = status.get("return", {}).get("status")
        if state == "paused":
            qmp(path, {"execute": "cont"})
            return True
    except (OSError, ValueError):
        return False
    return state == "running"


def save_ram(path: Path, dest: Path) -> None:
    """Saves the guest's RAM (physical addresses 0 to its size: below qemu's PCI hole, so
    all of it) to `dest`, then quits qemu."""
    size = int(QEMU_BASE[QEMU_BASE.index("-m") + 1]) << 20
    answers = qmp(path, {"execute": "pmemsave",
                         "arguments": {"val": 0, "size": size, "filename": str(dest)}},
                  {"execute": "quit"})
    if "error" in answers[0]:
        raise SystemExit(f"pmemsave failed: {answers[0]['error']}")
    say(f"saved the guest's RAM ({size >> 20} MiB) to {dest}")


# What the harness logs when a booted snapshot's guest is up and waits for its run's disk.
SNAPSHOT_POINT = "harness: snapshot point:"


def save_state(path: Path, dest: Path) -> None:
    """Saves the guest's whole state (CPU, devices, RAM) to `dest` through qemu's migration
    to a command, then quits qemu; `dest` appears only once it is complete. The guest is
    stopped first: a running guest's migration under multi-threaded TCG could miss pages
    it wrote meanwhile (a UEFI guest saved while still booting oopsed in free_pgtables
    and list_del at every restore); restored, it arrives paused (resume_restored)."""
    tmp = dest.with_name(dest.name + ".part")
    qmp(path, {"execute": "stop"},
        {"execute": "migrate", "arguments": {"uri": f"exec:cat > {tmp}"}})
    t0 = time.monotonic()
    while True:
        (st,) = qmp(path, {"execute": "query-migrate"})
        status = st.get("return", {}).get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() - t0 > 300:
            qmp(path, {"execute": "quit"})
            raise SystemExit(f"saving the guest's state to {dest} failed: {st}")
        time.sleep(0.5)
    tmp.rename(dest)
    qmp(path, {"execute": "quit"})
    say(f"saved the booted guest's state to {dest} ({dest.stat().st_size >> 20} MiB, "
        f"{time.monotonic() - t0:.0f} s)")


# Multi-threaded TCG does not always drop translated code when the guest kernel patches
# its own text (static keys via text_poke_bp): a vCPU then runs a stale int3 and the
# kernel oopses. CI lost a boot to it once (devcgroup_check_permission, 17.8 s into boot,
# before any exitrd code ran). Such a boot says nothing about exitrd, so it is repeated,
# once, on fresh disks, and the lost boot is kept and reported.
EMULATOR_FAULTS = ("Oops: int3", "kernel BUG at arch/x86/kernel/alternative.c")


def emulator_fault(text: str) -> str | None:
    return next((f for f in EMULATOR_FAULTS if f in text), None)


def boot_fresh(spec: BootSpec, setup) -> Boot:
    """boot() on the drives setup() makes; once more when the emulator broke the guest.
    The repeat is recorded in the Boot (`repeated`) and shown as such in every summary."""
    name, repeated = spec.name, ""
    for attempt in (1, 2):
        b = boot(spec, setup())
        fault = emulator_fault(b.text)
        if fault is None or attempt == 2:
            if attempt == 2:
                b.repeated = repeated
            return b
        lost = b.log_path.with_name(f"{name}.emulator-fault.serial.log")
        b.log_path.rename(lost)
        repeated = f"{fault!r} after {b.wall:.0f} s, log {lost.name}"
        say(f"boot {name}: the guest kernel hit a TCG emulation fault ({fault!r}; log {lost}); "
            "booting again on fresh disks")
        label = getattr(common.CONTEXT, "label", "")
        stat(f"{label} {name}: boot lost to a TCG emulation fault, REPEATED", b.wall)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- disks

# What a value written into a guest's shell env or GRUB's grub.cfg (single-quoted) may hold.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_./ :=,+-]*")


def make_harness_disk(path: Path, files: dict[str, Path | str | bytes], env: dict[str, str],
                      size: str = "300M") -> None:
    """An ext4 image labelled HARNESS holding run.sh, lib.sh, env and other inputs."""
    with tempfile.TemporaryDirectory(dir=path.parent) as d:
        root = Path(d)
        (root / "lib.sh").write_text(guest_text("lib.sh"))
        for name, src in files.items():
            dst = root / name
            if isinstance(src, Path):
                shutil.copyfile(src, dst)
            elif isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                dst.write_text(src)
        lines = []
        for k, v in env.items():
            if not SAFE_VALUE.fullmatch(v):
                raise ValueError(f"unsafe env value for {k}: {v!r}")
            lines.append(f"{k}='{v}'\n")
        (root / "env").write_text("".join(lines))
        (root / "out").mkdir()
        path.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", "HARNESS", "-d", root, path, size],
            stdout=subprocess.DEVNULL)


def grub_args(harness: Path, args: str) -> None:
    """Writes grub.cfg onto the HARNESS image: the kernel arguments a UEFI stack's GRUB
    adds for this boot (its 05_exitrd_harness snippet sources the file)."""
    if not SAFE_VALUE.fullmatch(args):
        raise ValueError(f"unsafe kernel arguments for GRUB: {args!r}")
    with tempfile.NamedTemporaryFile("w", dir=harness.parent, suffix=".grub.cfg") as f:
        f.write(f"set harness_args='{args.strip()}'\n")
        f.flush()
        run(["debugfs", "-w", "-R", f"write {f.name} grub.cfg", harness],
            capture_output=True, check=True)
    if not debugfs_cat(harness, "grub.cfg").startswith("set harness_args="):
        raise SystemExit(f"could not write grub.cfg onto {harness}")


def debugfs_cat(image: Path, path: str) -> str:
    r = run(["debugfs", "-R", f"cat {path}", image], capture_output=True, text=True,
            check=False)
    return r.stdout


def debugfs_dump(image: Path, src: str, dst: Path, rdump: bool = False) -> bool:
    if rdump:
        dst.mkdir(parents=True, exist_ok=True)
        cmd = f"rdump {src} {dst}"
    else:
        cmd = f"dump {src} {dst}"
    r = run(["debugfs", "-R", cmd, image], capture_output=True, text=True, check=False)
    ok = dst.exists() and (rdump or dst.stat().st_size > 0)
    if not ok:
        say(f"debugfs {cmd!r} on {image} failed: {r.stderr.strip()}")
    return ok


def overlay(base: Path, dst: Path, base_fmt: str = "qcow2") -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_fmt, "-b", base.resolve(), dst])
    return dst
