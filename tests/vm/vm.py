#!/usr/bin/env python3
"""VM test harness for exitrd: real shutdowns of real storage stacks under qemu (TCG).

    python3 tests/vm/vm.py run lvm-luks-md [--control] [--release trixie] [--show-log]
    python3 tests/vm/vm.py suite
    python3 tests/vm/vm.py demo

Stages (each cached under $EXITRD_VM_CACHE, default /var/tmp/exitrd-vm, keyed by a
hash of its inputs and rebuilt when missing):
  rootfs  debootstrap of a release plus the harness service        (per release)
  base    installer VM builds the scenario's stack on blank disks   (per scenario)
  pkg     the stack booted once to install exitrd.deb               (per scenario + .deb)
Every test then boots throw-away qcow2 overlays: a test boot (marker, normal
poweroff) and a check boot (marker read back, md state). See tests/vm/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"
CACHE = Path(os.environ.get("EXITRD_VM_CACHE", "/var/tmp/exitrd-vm"))
MIRROR = os.environ.get("EXITRD_VM_MIRROR", "http://deb.debian.org/debian")

# Bump when the host-side rootfs customisation below changes meaning.
ROOTFS_RECIPE = 1

BASE_PACKAGES = [
    "linux-image-amd64", "systemd-sysv", "udev", "initramfs-tools", "kmod", "zstd",
    "e2fsprogs", "mdadm", "cryptsetup", "cryptsetup-initramfs", "lvm2",
]

# Units that only slow a test boot down.
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "mdcheck_start.timer",
    "mdcheck_continue.timer", "mdmonitor-oneshot.timer", "dpkg-db-backup.timer",
    "serial-getty@ttyS0.service", "getty@tty1.service", "systemd-timesyncd.service",
]

HARNESS_UNIT = """\
[Unit]
Description=exitrd VM test harness (runs run.sh from the disk labelled HARNESS)
After=local-fs.target systemd-udevd.service
Wants=systemd-udevd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/exitrd-harness
TimeoutStartSec=infinity
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

QEMU = "qemu-system-x86_64"
QEMU_BASE = [
    QEMU, "-accel", "tcg,thread=multi", "-cpu", "max,erms=off", "-m", "1024",
    "-smp", "2", "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
    "-nic", "none",
]
CMDLINE_BASE = "console=ttyS0 printk.devkmsg=on panic=-1"

# Strings pinned from real serial logs: trixie (systemd 257, kernel 6.12) and bookworm
# (systemd 252, kernel 6.1). The None entries serve releases not pinned yet.
SYNC_LINE = "Syncing filesystems and block devices"
POWER_DOWN = "reboot: Power down"
SWITCH_LINES = {
    "trixie": ("Successfully changed into root pivot.", "Entering exitrd..."),
    "bookworm": ("Successfully changed into root pivot.", "Returning to initrd..."),
    None: ("Successfully changed into root pivot.",),
}
# systemd's last word when it could not take the stack down (and did not switch).
# systemd giving up on the storage: "...remaining DM devices, MD devices, ignoring." on a
# clean stack; "file systems, " is added when even the root could not be made read-only.
UNABLE_FINALIZE = {
    "trixie": re.compile(r"Unable to finalize remaining (file systems, )?DM devices, MD devices, ignoring\."),
    "bookworm": re.compile(r"Failed to finalize (file systems, )?DM devices, MD devices, ignoring\."),
    None: re.compile(r"finalize"),
}
GAVE_UP = ("Unable to finalize remaining", "Failed to finalize")


def pinned(table: dict, release: str):
    return table.get(release, table[None])

TIMEOUT_INSTALL = int(os.environ.get("EXITRD_VM_TIMEOUT_INSTALL", "1500"))
TIMEOUT_TEST = int(os.environ.get("EXITRD_VM_TIMEOUT_TEST", "420"))
TIMEOUT_CHECK = int(os.environ.get("EXITRD_VM_TIMEOUT_CHECK", "300"))


# --------------------------------------------------------------------------- scenarios

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One storage stack. Add a scenario by adding one of these to SCENARIOS."""

    name: str
    installer: str                       # guest/<installer> builds the stack
    disks: tuple[str, ...]               # sizes of the blank stack disks (qemu-img)
    root: str                            # root= for booting the stack
    closed: tuple[str, ...]              # names the exitrd must report as closed
    kernel_lines: tuple[str, ...] = ()   # kernel lines expected at a clean shutdown
    control_absent: tuple[str, ...] = () # ... and expected missing without the package
    release: str = "trixie"
    extra_packages: tuple[str, ...] = ()
    busybox_in_initramfs: bool = True    # False: BUSYBOX=n (cryptsetup-initramfs forces y)
    # Appended to the stack's initramfs.conf. zstd -1 trims the compression step; most of
    # update-initramfs's time under TCG is module copying for MODULES=most (~1 min on
    # trixie, ~8 min with bookworm's initramfs-tools 0.142), so only the modules this
    # machine's root needs go in (MODULES=dep; the test VMs are the installer's hardware).
    initramfs_conf: tuple[str, ...] = ("COMPRESSLEVEL=1", "MODULES=dep")
    check_md: bool = True                # assert no resync/recovery in the check boot
    timeout_test: int = TIMEOUT_TEST
    # Fault injection and extra expectations:
    test_extra: str | None = None        # guest/<script> run by the test boot before poweroff
    append: str = ""                     # extra kernel command line for the test boot
    expect: tuple[str, ...] = ()         # more strings required in the test boot's log
    forbid: tuple[str, ...] = ()         # strings that must not appear in it
    left: tuple[str, ...] = ()           # devices the exitrd must report as left (else none)
    control: bool = True                 # the suite also runs it without the package
    inventory: bool = True               # the exitrd must log its inventory line
    pivot: bool = True                   # systemd must switch into the exitrd
    final_line: str = "reboot: Power down"   # the kernel's last word for the verb used
    max_shutdown: float | None = None    # bound (s) on "Syncing filesystems" -> final line
    check_boot: bool = True              # boot once more to check the marker and the disks
    # Test boot media: "pkg" = disks with the package and the initrd with the payload;
    # "base+deb" = disks and initrd without it, the .deb on the HARNESS disk (installed
    # on the running system); "pkg-plain" = disks with the package, initrd without it.
    media: str = "pkg"

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.release}"


SCENARIOS: dict[str, Scenario] = {}   # by ident, "name@release"


def scenario(releases: tuple[str, ...] = ("trixie",), **kw) -> None:
    """Declare a scenario on one or more releases."""
    for r in releases:
        s = Scenario(release=r, **kw)
        SCENARIOS[s.ident] = s


scenario(
    releases=("trixie", "bookworm"),
    name="lvm-luks-md",
    installer="install-lvm-luks-md.sh",
    disks=("4G", "4G"),
    root="/dev/mapper/vg0-root",
    closed=("vg0-root", "md0_crypt", "md0"),
    kernel_lines=("md: md0 stopped.",),
    control_absent=("md: md0 stopped.",),
)


# The fault matrix: each fault reaches the exitrd (systemd ends every ordinary process
# before it switches), and the exitrd must still power off within its deadline (60 s by
# default, plus a margin) with the marker intact on the next boot.
FAULT_STACK = dict(installer="install-lvm-luks-md.sh", disks=("4G", "4G"),
                   root="/dev/mapper/vg0-root", control_absent=("md: md0 stopped.",),
                   max_shutdown=75.0)
scenario(
    name="fault-held-root", **FAULT_STACK,
    closed=("vg0-root", "md0_crypt", "md0"), kernel_lines=("md: md0 stopped.",),
    test_extra="fault-held-root.sh",
    expect=("is held by", "spared as @", "via open file /oldroot/root/held",
            "exitrd: sending SIGKILL", "exitrd: unmounted /oldroot (ext4"),
)
scenario(
    name="fault-hook-hang", **FAULT_STACK,
    closed=("vg0-root", "md0_crypt", "md0"), kernel_lines=("md: md0 stopped.",),
    test_extra="fault-hook-hang.sh",
    expect=("hook unmounted/50-hang: still running after 10s: killed, going on",),
)
scenario(
    name="fault-dm-suspended", **FAULT_STACK,
    closed=("vg0-root", "md0_crypt", "md0"), left=("fault",),
    test_extra="fault-dm-suspended.sh",
    expect=("harness: fault: /run/fault-mnt on suspended dm 'fault'",
            "could not unmount /oldroot/run/fault-mnt", "timed out"),
)
scenario(
    name="fault-panic", **FAULT_STACK,
    closed=(), inventory=False, check_md=False,
    test_extra="fault-panic.sh", append="exitrd.fault=panic",
    expect=("exitrd: internal error:", "test fault exitrd.fault=panic",
            "exitrd: unmounted /oldroot (ext4", "exitrd: powering off"),
)
scenario(
    name="fault-bad-input", **FAULT_STACK,
    closed=("vg0-root", "md0_crypt", "md0"), kernel_lines=("md: md0 stopped.",),
    test_extra="fault-config.sh", append="exitrd.fault=verb:sing",
    final_line="reboot: Restarting system",
    expect=('unknown verb "sing": rebooting', "/exitrd.conf: line 1: bad value",
            'unknown key "colour"', "exitrd: rebooting"),
)

# The administrator's side (issue 5): installed on a running system, the package makes
# the very next shutdown go through the exitrd without a reboot (exitrd.service repairs
# /run/initramfs from the installed files); with no payload in the initramfs and the
# unit masked, 'exitrd status' must say so and exit 1.
scenario(
    name="install-running", installer="install-lvm-luks-md.sh", disks=("4G", "4G"),
    root="/dev/mapper/vg0-root", closed=("vg0-root", "md0_crypt", "md0"),
    kernel_lines=("md: md0 stopped.",), control_absent=("md: md0 stopped.",),
    media="base+deb", test_extra="install-running.sh", timeout_test=1200,
    expect=("harness: status before poweroff: exit 0", '"ready": true',
            '"payload_version": "'),
)
scenario(
    name="status-not-ready", installer="install-lvm-luks-md.sh", disks=("4G", "4G"),
    root="/dev/mapper/vg0-root", closed=(), inventory=False, control=False, pivot=False,
    media="pkg-plain", append="systemd.mask=exitrd.service", check_boot=False,
    test_extra="status-not-ready.sh",
    expect=("harness: status exit 1", "exitrd status: NOT READY",
            "fix: systemctl restart exitrd.service"),
    forbid=("Successfully changed into root pivot.",),
)


# --------------------------------------------------------------------------- helpers

def say(msg: str) -> None:
    print(f"[vm] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def guest_text(name: str) -> str:
    return (GUEST / name).read_text()


FAILED: dict[str, str] = {}


def cached(kind: str, key: str, build) -> Path:
    """Return CACHE/<kind>-<key>, building it with build(tmpdir) when missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"{kind}-{key}"
    with open(CACHE / f".{kind}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            say(f"cache hit: {final}")
            return final
        if final.exists():
            shutil.rmtree(final)
        for stale in CACHE.glob(f"{kind}-{key}.tmp-*"):
            shutil.rmtree(stale)  # a failed earlier build (we hold the lock)
        if final.name in FAILED:
            raise SystemExit(FAILED[final.name])
        tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-{key}.tmp-", dir=CACHE))
        t0 = time.monotonic()
        say(f"building {kind} -> {final}")
        try:
            build(tmp)
        except BaseException as e:
            failed = CACHE / f"{kind}-{key}.failed"
            if failed.exists():
                shutil.rmtree(failed)
            tmp.rename(failed)
            msg = f"build of {kind} failed ({e}); its files are in {failed}"
            say(msg)
            FAILED[final.name] = msg  # not again in this invocation
            raise
        (tmp / ".complete").write_text(f"{time.monotonic() - t0:.0f}\n")
        tmp.rename(final)
        say(f"built {kind} in {time.monotonic() - t0:.0f} s")
        return final


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
            if not re.fullmatch(r"[A-Za-z0-9_./ :=,+-]*", v):
                raise ValueError(f"unsafe env value for {k}: {v!r}")
            lines.append(f"{k}='{v}'\n")
        (root / "env").write_text("".join(lines))
        (root / "out").mkdir()
        path.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", "HARNESS", "-d", root, path, size],
            stdout=subprocess.DEVNULL)


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


# --------------------------------------------------------------------------- qemu

@dataclasses.dataclass
class Boot:
    name: str
    log_path: Path
    wall: float
    timed_out: bool
    timeout: int
    returncode: int | None

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


# TCG guests run their clocks in real time: crowd the host's cores with vCPUs and guest
# timeouts (systemd's, exitrd's own deadline) fire for nothing. Boots from concurrent
# vm.py invocations take one of EXITRD_VM_SLOTS (default: the core count) slots.
VM_SLOTS = int(os.environ.get("EXITRD_VM_SLOTS", str(os.cpu_count() or 1)))


@contextlib.contextmanager
def vm_slot(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for i in range(max(1, VM_SLOTS)):
            f = open(CACHE / f".vm-slot-{i}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield
            finally:
                f.close()
            return
        if not waited:
            say(f"boot {name}: waiting for one of {VM_SLOTS} VM slots (other vm.py runs)")
            waited = True
        time.sleep(2)


def boot(name: str, rundir: Path, kernel: Path, initrd: Path, append: str,
         drives: list[Path], timeout: int, fmt: str = "qcow2") -> Boot:
    with vm_slot(name):
        return boot_now(name, rundir, kernel, initrd, append, drives, timeout, fmt)


def boot_now(name: str, rundir: Path, kernel: Path, initrd: Path, append: str,
             drives: list[Path], timeout: int, fmt: str = "qcow2") -> Boot:
    log_path = rundir / f"{name}.serial.log"
    cmd = QEMU_BASE + [
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"{append} {CMDLINE_BASE}",
        "-serial", f"file:{log_path}",
    ]
    for d in drives:
        f = "raw" if d.suffix in (".img", ".raw") else fmt
        cmd += ["-drive", f"file={d},if=virtio,format={f},cache=unsafe,discard=unmap"]
    (rundir / f"{name}.qemu-cmd").write_text(" ".join(cmd) + "\n")
    say(f"boot {name}: {log_path} (limit {timeout} s)")
    t0 = time.monotonic()
    with open(rundir / f"{name}.qemu-stderr", "wb") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        timed_out = False
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            p.kill()
            p.wait()
    b = Boot(name, log_path, time.monotonic() - t0, timed_out, timeout, p.returncode)
    log_path.touch()
    state = f"VM did not power off within {timeout} s" if timed_out else "exited"
    say(f"boot {name}: {state} after {b.wall:.0f} s")
    return b


# Multi-threaded TCG does not always drop translated code when the guest kernel patches
# its own text (static keys via text_poke_bp): a vCPU then runs a stale int3 and the
# kernel oopses. CI lost a boot to it once (devcgroup_check_permission, 17.8 s into boot,
# before any exitrd code ran). Such a boot says nothing about exitrd, so it is repeated,
# once, on fresh disks, and the lost boot is kept and reported.
EMULATOR_FAULTS = ("Oops: int3", "kernel BUG at arch/x86/kernel/alternative.c")


def emulator_fault(text: str) -> str | None:
    return next((f for f in EMULATOR_FAULTS if f in text), None)


def boot_fresh(name: str, rundir: Path, kernel: Path, initrd: Path, append: str,
               setup, timeout: int) -> Boot:
    """boot() on the drives setup() makes; once more when the emulator broke the guest."""
    for attempt in (1, 2):
        b = boot(name, rundir, kernel, initrd, append, setup(), timeout)
        fault = emulator_fault(b.text)
        if fault is None or attempt == 2:
            return b
        lost = b.log_path.with_name(f"{name}.emulator-fault.serial.log")
        b.log_path.rename(lost)
        say(f"boot {name}: the guest kernel hit a TCG emulation fault ({fault!r}; log {lost}); "
            "booting again on fresh disks")
        STATS.append((f"{name}: boot lost to a TCG emulation fault, repeated", b.wall))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- log parsing

# CSI sequences (colours, cursor queries, "ESC [ ! p"), OSC sequences, carriage returns.
ANSI = re.compile(r"\x1b\[[0-9;?!]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\r")
STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def clean_log(text: str) -> str:
    return ANSI.sub("", text)


def stamped(text: str) -> list[tuple[float | None, str]]:
    out = []
    for line in text.splitlines():
        m = STAMP.match(line)
        out.append((float(m.group(1)), m.group(2)) if m else (None, line))
    return out


def first_stamp(text: str, needle: str, after: float = -1.0) -> float | None:
    for ts, msg in stamped(text):
        if ts is not None and ts >= after and needle in msg:
            return ts
    return None


def shutdown_seconds(text: str, end_line: str = POWER_DOWN) -> float | None:
    start = first_stamp(text, SYNC_LINE)
    if start is None:
        return None
    end = first_stamp(text, end_line, start)
    return None if end is None else end - start


def shutdown_excerpt(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if SYNC_LINE in l), None)
    if start is None:
        return "\n".join(lines[-60:])
    end = next((i for i in range(start, len(lines)) if POWER_DOWN in lines[i]), len(lines) - 1)
    return "\n".join(lines[start:end + 1])


def harness_lines(text: str) -> list[str]:
    out = []
    for _, msg in stamped(text):
        i = msg.find("harness: ")
        if i >= 0:
            out.append(msg[i + len("harness: "):])
    return out


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def indent(text: str) -> str:
    return "\n".join("    | " + l for l in text.splitlines())


INVENTORY = re.compile(r"exitrd: inventory: closed: (.*?); left: (.*)$")


def inventory(text: str) -> tuple[list[str], str] | None:
    # The exitrd writes each line to the console and to kmsg; console lines can be cut
    # by kernel lines, so prefer the kmsg copy (the one with a timestamp).
    found = {}
    for ts, msg in stamped(text):
        m = INVENTORY.search(msg)
        if m:
            found[ts is not None] = (
                [n for n in re.split(r"[\s,]+", m.group(1).strip()) if n], m.group(2).strip())
    return found.get(True) or found.get(False)


# --------------------------------------------------------------------------- assertions

@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def require_harness_ok(b: Boot, what: str) -> None:
    text = b.text
    if b.timed_out:
        raise SystemExit(f"{what}: VM did not power off within {b.timeout} s; "
                         f"serial log {b.log_path}\n{indent(tail(text, 60))}")
    if "run.sh exit=0" not in harness_lines(text):
        raise SystemExit(f"{what}: the guest script failed; serial log {b.log_path}\n"
                         + indent("\n".join(harness_lines(text)[-60:]) or tail(text, 60)))


def checks_test_boot(s: Scenario, b: Boot) -> list[Check]:
    text = b.text
    excerpt = shutdown_excerpt(text)
    c = []
    ended = not b.timed_out and s.final_line in text
    c.append(Check(f"VM ended by itself with '{s.final_line}'", ended, b.why_not_off()))
    c.append(Check("harness test script ran", "marker written" in harness_lines(text),
                   "no 'harness: marker written'"))
    if s.max_shutdown is not None:
        secs = shutdown_seconds(text, s.final_line)
        c.append(Check(f"shutdown within {s.max_shutdown:.0f} s", secs is not None
                       and secs <= s.max_shutdown, f"took {secs} s"))
    missing = [l for l in pinned(SWITCH_LINES, s.release) if l not in text]
    if s.pivot:
        c.append(Check("systemd switched into the exitrd", not missing,
                       f"missing: {missing}"))
    inv = inventory(text)
    if not s.inventory:
        pass
    elif inv is None:
        c.append(Check("exitrd inventory line", False, "no 'exitrd: inventory:' line"))
    else:
        closed, left = inv
        absent = [n for n in s.closed if n not in closed]
        c.append(Check(f"exitrd closed {', '.join(s.closed)}", not absent,
                       f"closed: {closed}; not closed: {absent}"))
        if s.left:
            missing = [n for n in s.left if n not in left]
            c.append(Check(f"exitrd left {', '.join(s.left)}", not missing, f"left: {left}"))
        else:
            c.append(Check("exitrd left none", left == "none", f"left: {left}"))
    for l in s.kernel_lines:
        c.append(Check(f"kernel logged '{l}'", l in text, "absent"))
    gave_up = [l for l in GAVE_UP if l in text]
    if s.pivot:
        c.append(Check("systemd did not give up ('Unable/Failed to finalize')", not gave_up,
                       f"present: {gave_up}"))
    for l in s.expect:
        c.append(Check(f"log has '{l}'", l in text, "absent"))
    for l in s.forbid:
        c.append(Check(f"log lacks '{l}'", l not in text, "present"))
    for x in c:
        if not x.ok:
            x.detail += f"\n  shutdown part of {b.log_path}:\n" + indent(excerpt)
            break
    return c


def checks_check_boot(s: Scenario, b: Boot, token: str) -> list[Check]:
    text = b.text
    hl = harness_lines(text)
    c = [Check("check boot powered off", b.powered_off, b.why_not_off())]
    marker = next((l[len("marker="):] for l in hl if l.startswith("marker=")), None)
    c.append(Check("marker survived", marker == token, f"marker={marker!r}, token={token!r}"))
    if s.check_md:
        md = [l for l in hl if l.startswith("mdstat ")]
        busy = [l for l in md if re.search(r"resync|recover|reshape|check", l)]
        c.append(Check("md arrays idle (no resync/recovery)", bool(md) and not busy,
                       "\n" + indent("\n".join(md) or "no mdstat lines")))
        unclean = [msg for _, msg in stamped(text) if "not clean -- starting background" in msg]
        c.append(Check("md not marked unclean at assembly", not unclean, "; ".join(unclean)))
    fsck = [l[len("fsck "):] for l in hl if l.startswith("fsck ")]
    if fsck:
        clean = any(re.search(r": clean, \d+/\d+ files", l) for l in fsck)
        dirty = [l for l in fsck if re.search(r"recovering journal|was not cleanly unmounted", l)]
        c.append(Check("root fs clean at next boot (initramfs fsck)", clean and not dirty,
                       "\n" + indent("\n".join(fsck))))
    for x in c:
        if not x.ok:
            x.detail += f"\n  harness lines of {b.log_path}:\n" + indent("\n".join(hl[-30:]))
            break
    return c


def checks_control(s: Scenario, b: Boot) -> list[Check]:
    """Without the package, systemd must fail to finish and never switch."""
    text = b.text
    unable = pinned(UNABLE_FINALIZE, s.release)
    switch = pinned(SWITCH_LINES, s.release)
    c = [Check("VM powered off by itself", b.powered_off, b.why_not_off()),
         Check("no switch into an exitrd", not any(l in text for l in switch), "switched"),
         Check(f"systemd gave up: /{unable.pattern}/", unable.search(text) is not None,
               "absent")]
    for l in s.control_absent:
        c.append(Check(f"no '{l}'", l not in text, "present"))
    with_pkg_failed = [x.name for x in checks_test_boot(s, b) if not x.ok]
    c.append(Check("with-package assertions fail on the control", bool(with_pkg_failed),
                   "every with-package assertion passed on the control"))
    return c


# --------------------------------------------------------------------------- stages

@functools.cache
def rootfs(release: str, extra: tuple[str, ...] = ()) -> Path:
    packages = sorted(set(BASE_PACKAGES) | set(extra))
    key = key_of("rootfs", ROOTFS_RECIPE, release, MIRROR, packages, guest_text("harness.sh"),
                 HARNESS_UNIT, MASKED_UNITS)

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        root = tmp / "rootfs"
        log = tmp / "debootstrap.log"
        say(f"debootstrap {release} (log {log})")
        with open(log, "w") as f:
            r = subprocess.run(["debootstrap", "--variant=minbase",
                                "--include=" + ",".join(packages), release, str(root), MIRROR],
                               stdout=f, stderr=subprocess.STDOUT)
        if r.returncode:
            raise SystemExit(f"debootstrap failed, see {log}:\n{indent(tail(log.read_text()))}")
        customise_rootfs(root)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise SystemExit(f"expected one kernel and initrd in {root}/boot")
        shutil.copyfile(kernels[0], tmp / "vmlinuz")
        shutil.copyfile(initrds[0], tmp / "initrd.img")
        (tmp / "kernel-version").write_text(kernels[0].name[len("vmlinuz-"):] + "\n")
        run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", root, tmp / "rootfs.img", "3G"],
            stdout=subprocess.DEVNULL)
        STATS.append((f"rootfs {release}: debootstrap and image", time.monotonic() - t0))

    return cached(f"rootfs-{release}", key, build)


def customise_rootfs(root: Path) -> None:
    (root / "etc/hostname").write_text("exitrd-vm\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 exitrd-vm\n")
    (root / "etc/fstab").write_text("# placeholder: the installer writes the real one\n")
    run(["chroot", root, "passwd", "-d", "root"], stdout=subprocess.DEVNULL)
    sbin = root / "usr/local/sbin/exitrd-harness"
    sbin.write_text(guest_text("harness.sh"))
    sbin.chmod(0o755)
    (root / "mnt/harness").mkdir(parents=True, exist_ok=True)
    units = root / "etc/systemd/system"
    (units / "exitrd-harness.service").write_text(HARNESS_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "exitrd-harness.service").unlink(missing_ok=True)
    (wants / "exitrd-harness.service").symlink_to("/etc/systemd/system/exitrd-harness.service")
    for u in MASKED_UNITS:
        (units / u).unlink(missing_ok=True)
        (units / u).symlink_to("/dev/null")
    # No stale apt lists or package cache in the image.
    run(["chroot", root, "apt-get", "clean"])


@functools.cache
def stack_base(s: Scenario) -> Path:
    rf = rootfs(s.release, s.extra_packages)
    key = key_of("base", rf.name, s.installer, guest_text(s.installer), guest_text("lib.sh"),
                 s.disks, s.busybox_in_initramfs, s.initramfs_conf)

    def build(tmp: Path) -> None:
        work = tmp / "work"
        work.mkdir()
        hd = work / "harness.img"

        def setup() -> list[Path]:
            root_ov = overlay(rf / "rootfs.img", work / "rootfs.qcow2", "raw")
            disks = []
            for i, size in enumerate(s.disks):
                d = tmp / f"disk{i}.qcow2"
                d.unlink(missing_ok=True)
                run(["qemu-img", "create", "-q", "-f", "qcow2", d, size])
                disks.append(d)
            names = " ".join(f"/dev/vd{chr(ord('b') + i)}" for i in range(len(disks)))
            make_harness_disk(hd, {"run.sh": guest_text(s.installer)},
                              {"STACK_DISKS": names, "OUT_INITRD": "initrd-plain.img",
                               "INITRAMFS_BUSYBOX": "y" if s.busybox_in_initramfs else "n",
                               "INITRAMFS_CONF": " ".join(s.initramfs_conf)})
            return [root_ov] + disks + [hd]

        b = boot_fresh("install", tmp, rf / "vmlinuz", rf / "initrd.img", "root=/dev/vda rw",
                       setup, TIMEOUT_INSTALL)
        require_harness_ok(b, f"{s.ident}: installer")
        if not debugfs_dump(hd, "/out/initrd-plain.img", tmp / "initrd-plain.img"):
            raise SystemExit(f"{s.ident}: installer left no initrd-plain.img")
        shutil.copyfile(rf / "vmlinuz", tmp / "vmlinuz")
        shutil.rmtree(work)
        STATS.append((f"{s.ident}: stage base (installer boot)", b.wall))

    return cached(f"base-{stack_name(s)}-{s.release}", key, build)


def stack_name(s: Scenario) -> str:
    """Scenarios sharing an installer (e.g. fault injections) share their disks."""
    return s.installer.removeprefix("install-").removesuffix(".sh")


def base_disks(d: Path) -> list[Path]:
    return sorted(d.glob("disk*.qcow2"))


@functools.cache
def find_deb() -> Path:
    """The .deb under test: $EXITRD_DEB, or built once per invocation by scripts/build-deb."""
    env = os.environ.get("EXITRD_DEB")
    if env:
        p = Path(env).resolve()
        if not p.is_file():
            raise SystemExit(f"EXITRD_DEB={env}: no such file")
        return p
    script = REPO / "scripts/build-deb"
    if not script.exists():
        raise SystemExit(f"{script} does not exist yet; set EXITRD_DEB=/path/to/exitrd.deb")
    say("building the package: sh scripts/build-deb")
    r = subprocess.run(["sh", str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"scripts/build-deb failed with exit code {r.returncode}")
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    if not lines:
        raise SystemExit("scripts/build-deb printed nothing; expected the .deb path last")
    p = (REPO / lines[-1].strip()).resolve()
    if not p.is_file():
        raise SystemExit(f"scripts/build-deb printed {lines[-1]!r}, which is not a file")
    return p


def stack_pkg(s: Scenario, deb: Path) -> Path:
    base = stack_base(s)
    deb_sha = sha256_file(deb)
    key = key_of("pkg", base.name, deb_sha, guest_text("install-package.sh"), guest_text("lib.sh"))

    def build(tmp: Path) -> None:
        hd = tmp / "harness.img"

        def setup() -> list[Path]:
            disks = [overlay(d, tmp / d.name) for d in base_disks(base)]
            make_harness_disk(hd, {"run.sh": guest_text("install-package.sh"), "exitrd.deb": deb},
                              {"OUT_INITRD": "initrd-exitrd.img"})
            return disks + [hd]

        b = boot_fresh("install-package", tmp, base / "vmlinuz", base / "initrd-plain.img",
                       f"root={s.root} ro", setup, TIMEOUT_INSTALL)
        require_harness_ok(b, f"{s.ident}: package install")
        if not debugfs_dump(hd, "/out/initrd-exitrd.img", tmp / "initrd-exitrd.img"):
            raise SystemExit(f"{s.ident}: package stage left no initrd-exitrd.img")
        hd.unlink()
        (tmp / "deb.sha256").write_text(f"{deb_sha}  {deb.name}\n")
        STATS.append((f"{s.ident}: stage pkg (package install boot)", b.wall))

    return cached(f"pkg-{stack_name(s)}-{s.release}", key, build)


# --------------------------------------------------------------------------- a test run

STATS: list[tuple[str, float]] = []


@dataclasses.dataclass
class Result:
    label: str
    passed: bool
    checks: list[Check]
    rundir: Path
    test: Boot | None = None
    check: Boot | None = None
    error: str = ""


def run_scenario(s: Scenario, control: bool, capture: Path | None = None,
                 show_log: bool = False, keep: bool = False) -> Result:
    label = f"{s.ident}{' (control)' if control else ''}"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rundir = CACHE / "runs" / f"{stamp}-{s.name}-{s.release}{'-control' if control else ''}"
    rundir.mkdir(parents=True, exist_ok=True)
    try:
        base = stack_base(s)
        if control or s.media == "base+deb":
            src, initrd = base, base / "initrd-plain.img"
        elif s.media == "pkg-plain":
            src, initrd = stack_pkg(s, find_deb()), base / "initrd-plain.img"
        else:
            src = stack_pkg(s, find_deb())
            initrd = src / "initrd-exitrd.img"
    except SystemExit as e:
        r = Result(label, False, [], rundir, error=str(e))
        report(r)
        return r
    say(f"{label}: run folder {rundir}")
    token = secrets.token_hex(16)
    (rundir / "run.json").write_text(json.dumps(
        {"scenario": s.name, "release": s.release, "control": control, "token": token}) + "\n")

    hd = rundir / "harness-test.img"
    files = {"run.sh": guest_text("test.sh"), "shutdown-diag.sh": guest_text("shutdown-diag.sh")}
    if s.test_extra:
        files["extra.sh"] = guest_text(s.test_extra)
    if s.media == "base+deb" and not control:
        files["exitrd.deb"] = find_deb()
    disks: list[Path] = []

    def setup_test() -> list[Path]:
        disks[:] = [overlay(d, rundir / d.name) for d in sorted(src.glob("disk*.qcow2"))]
        make_harness_disk(hd, files, {"TOKEN": token, "CAPTURE": "1" if capture else "0"})
        return disks + [hd]

    tb = boot_fresh("test", rundir, base / "vmlinuz", initrd,
                    f"root={s.root} ro {s.append}".strip(), setup_test, s.timeout_test)
    STATS.append((f"{label}: test boot", tb.wall))
    if capture and tb.powered_off:
        tmpcap = rundir / "fixture"
        if debugfs_dump(hd, "/out/fixture", tmpcap, rdump=True):
            capture.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmpcap / "fixture", capture, dirs_exist_ok=True)
            say(f"fixture copied to {capture}")

    cb = None
    # A control only has to show that the test boot's assertions fail without the
    # package; what its next boot finds is not asserted, so it is not booted.
    if s.check_boot and not control:
        hc = rundir / "harness-check.img"

        def setup_check() -> list[Path]:
            # On top of the test boot's disks, so a repeated check boot finds them as the
            # test boot left them.
            upper = [overlay(d, d.with_name(f"check-{d.name}")) for d in disks]
            make_harness_disk(hc, {"run.sh": guest_text("check.sh")}, {})
            return upper + [hc]

        cb = boot_fresh("check", rundir, base / "vmlinuz", initrd,
                        f"root={s.root} ro init=/usr/local/sbin/exitrd-harness", setup_check,
                        TIMEOUT_CHECK)
        STATS.append((f"{label}: check boot", cb.wall))

    res = evaluate(s, control, label, rundir, tb, cb, token)
    report(res, show_log)
    if not keep:
        for d in disks:
            d.with_name(f"check-{d.name}").unlink(missing_ok=True)
            d.unlink(missing_ok=True)
    return res


def evaluate(s: Scenario, control: bool, label: str, rundir: Path, tb: Boot, cb: Boot,
             token: str) -> Result:
    after = checks_check_boot(s, cb, token) if cb is not None else []
    if control:
        checks = checks_control(s, tb) + after
    else:
        checks = checks_test_boot(s, tb) + after
    return Result(label, all(c.ok for c in checks), checks, rundir, tb, cb)


def cmd_recheck(a) -> int:
    """Evaluate the assertions again on the logs of an earlier run (no VM)."""
    rundir = Path(a.rundir).resolve()
    meta = json.loads((rundir / "run.json").read_text())
    s = pick(meta["scenario"], meta["release"])
    boots = [Boot(n, rundir / f"{n}.serial.log", 0.0, False, 0, 0)
             if (rundir / f"{n}.serial.log").exists() else None for n in ("test", "check")]
    label = f"{s.ident}{' (control)' if meta['control'] else ''}"
    r = evaluate(s, meta["control"], label, rundir, boots[0], boots[1], meta["token"])
    report(r, a.show_log)
    return 0 if r.passed else 1


def report(r: Result, show_log: bool = False) -> None:
    print(f"\n== {r.label}: {'PASS' if r.passed else 'FAIL'}")
    if r.error:
        print(f"   error: {r.error}")
    for c in r.checks:
        print(f"   [{'ok' if c.ok else 'FAIL'}] {c.name}" + ("" if c.ok else f": {c.detail}"))
    for b in (r.test, r.check):
        if b is None:
            continue
        secs = shutdown_seconds(b.text)
        fig = f"; shutdown {secs:.2f} s (sync -> power down)" if secs is not None else ""
        wall = f"wall {b.wall:.0f} s" if b.wall else "wall n/a"
        print(f"   {b.name} boot: {wall}{fig}; log {b.log_path}")
        notes = sorted({m for ts, m in stamped(b.text) if ts is not None and "exitrd: could not" in m})
        for n in notes:
            print(f"   note: {n}")
        if show_log:
            print(indent(b.text))
    print(flush=True)


# --------------------------------------------------------------------------- commands

def pick(name: str, release: str | None) -> Scenario:
    """NAME or NAME@RELEASE; --release runs a declared scenario on another release too."""
    if "@" in name:
        name, release = name.split("@", 1)
    same = [s for s in SCENARIOS.values() if s.name == name]
    if not same:
        known = sorted({s.name for s in SCENARIOS.values()})
        raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(known)}")
    exact = [s for s in same if s.release == release]
    if exact or not release:
        return (exact or same)[0]
    return dataclasses.replace(same[0], release=release)


def print_stats(total: float) -> None:
    print("timings:")
    for what, secs in STATS:
        print(f"  {secs:7.0f} s  {what}")
    print(f"  {total:7.0f} s  total wall time")


def cmd_run(a) -> int:
    t0 = time.monotonic()
    s = pick(a.scenario, a.release)
    cap = Path(a.capture).resolve() if a.capture else None
    r = run_scenario(s, a.control, cap, a.show_log, a.keep)
    print_stats(time.monotonic() - t0)
    return 0 if r.passed else 1


def cmd_suite(a) -> int:
    t0 = time.monotonic()
    results = []
    if a.names:
        chosen = [pick(n, a.release) for n in a.names]
    elif a.release:
        chosen = list({pick(s.name, a.release): None for s in SCENARIOS.values()})
    else:
        chosen = list(SCENARIOS.values())
    for s in chosen:
        for control in (False, True) if s.control else (False,):
            results.append(run_scenario(s, control, keep=a.keep))
    print("\nsuite results:")
    for r in results:
        extra = f" ({r.error.splitlines()[0]})" if r.error else ""
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.label}{extra}")
    print_stats(time.monotonic() - t0)
    npass = sum(r.passed for r in results)
    print(f"{npass} passed, {len(results) - npass} failed")
    return 0 if npass == len(results) else 1


def cmd_demo(a) -> int:
    t0 = time.monotonic()
    s = pick("lvm-luks-md", a.release)
    r = run_scenario(s, False)
    if r.test is not None:
        text = r.test.text
        print("---- shutdown, from the serial log of the test boot ----")
        print(shutdown_excerpt(text))
        print("----")
        secs = shutdown_seconds(text)
        if secs is not None:
            print(f"shutdown took {secs:.2f} s from '{SYNC_LINE}' to '{POWER_DOWN}'")
    print_stats(time.monotonic() - t0)
    return 0 if r.passed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run one scenario")
    p.add_argument("scenario")
    p.add_argument("--control", action="store_true", help="boot without the package")
    p.add_argument("--release", default=None)
    p.add_argument("--show-log", action="store_true")
    p.add_argument("--capture", metavar="DIR", help="capture a topology fixture into DIR")
    p.add_argument("--keep", action="store_true", help="keep the run's overlay disks")
    p = sub.add_parser("suite", help="run every scenario (or those named) and its control")
    p.add_argument("names", nargs="*", help="only these scenarios")
    p.add_argument("--release", default=None, help="run them on this release instead")
    p.add_argument("--keep", action="store_true")
    p = sub.add_parser("demo", help="run lvm-luks-md and show its shutdown")
    p.add_argument("--release", default=None)
    sub.add_parser("list", help="list scenarios")
    p = sub.add_parser("recheck", help="evaluate the assertions again on a run folder's logs")
    p.add_argument("rundir")
    p.add_argument("--show-log", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for s in SCENARIOS.values():
            print(s.ident)
        return 0
    if a.cmd == "recheck":
        return cmd_recheck(a)
    if os.geteuid() != 0:
        raise SystemExit("needs root (debootstrap, chroot)")
    return {"run": cmd_run, "suite": cmd_suite, "demo": cmd_demo}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
