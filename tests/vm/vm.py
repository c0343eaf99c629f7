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
import concurrent.futures
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
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"
CACHE = Path(os.environ.get("EXITRD_VM_CACHE", "/var/tmp/exitrd-vm"))
MIRROR = os.environ.get("EXITRD_VM_MIRROR", "http://deb.debian.org/debian")

# Bump when the host-side rootfs customisation below changes meaning.
ROOTFS_RECIPE = 1
# Every stage descends from a rootfs, whose key carries the month: a warm machine
# debootstraps again (and so rebuilds every stage) once a month instead of testing a
# frozen Debian forever. EXITRD_VM_EPOCH pins it (e.g. to rerun an old run's inputs).
EPOCH = os.environ.get("EXITRD_VM_EPOCH") or time.strftime("%Y-%m", time.gmtime())

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
# vCPUs per guest. The suite boots EXITRD_VM_SLOTS guests at a time (default: one per
# host core), each with one vCPU, so vCPUs never outnumber cores (a TCG guest's clock runs
# in real time: an overcrowded host fires guest timeouts for nothing). A single boot
# (`vm.py run`, one slot) gets two.
VM_CPUS = int(os.environ.get("EXITRD_VM_CPUS", "0"))
QEMU_BASE = [
    QEMU, "-accel", "tcg,thread=multi", "-cpu", "max,erms=off", "-m", "1024",
    "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
    "-nic", "none",
]
CMDLINE_BASE = "console=ttyS0 printk.devkmsg=on panic=-1"

# Log lines pinned from real serial logs: trixie (systemd 257, kernel 6.12) and bookworm
# (systemd 252, kernel 6.1). Expectations match whole lines (see line_pattern: '*' is
# any text, Rx a regex). The None entries serve releases not pinned yet.
SYNC_LINE = "Syncing filesystems and block devices"
POWER_DOWN = "reboot: Power down"
SWITCH_LINES = {
    "trixie": ("systemd-shutdown[1]: Successfully changed into root pivot.",
               "systemd-shutdown[1]: Entering exitrd..."),
    "bookworm": ("systemd-shutdown[1]: Successfully changed into root pivot.",
                 "systemd-shutdown[1]: Returning to initrd..."),
    None: ("systemd-shutdown[1]: Successfully changed into root pivot.",),
}


class Rx(str):
    """A regular expression for one whole log line (the message after the timestamp)."""


# systemd's last word when it could not take the stack down (and did not switch):
# "...remaining DM devices, MD devices, ignoring." on a clean stack; "file systems, " is
# added when even the root could not be made read-only.
UNABLE_FINALIZE = {
    "trixie": Rx(r"systemd-shutdown\[1\]: Unable to finalize remaining (file systems, )?"
                 r"DM devices, MD devices, ignoring\."),
    "bookworm": Rx(r"systemd-shutdown\[1\]: Failed to finalize (file systems, )?"
                   r"DM devices, MD devices, ignoring\."),
    None: Rx(r"systemd-shutdown\[1\]: .*finalize.*"),
}
GAVE_UP = re.compile(r"systemd-shutdown\[1\]: (Unable to finalize remaining|Failed to finalize) .*")


def pinned(table: dict, release: str):
    return table.get(release, table[None])

TIMEOUT_INSTALL = int(os.environ.get("EXITRD_VM_TIMEOUT_INSTALL", "1500"))
TIMEOUT_TEST = int(os.environ.get("EXITRD_VM_TIMEOUT_TEST", "420"))
TIMEOUT_CHECK = int(os.environ.get("EXITRD_VM_TIMEOUT_CHECK", "300"))


# --------------------------------------------------------------------------- scenarios

@dataclasses.dataclass(frozen=True)
class Scenario:
    """One storage stack. Add a scenario by adding one of these to SCENARIOS.

    Log expectations (kernel_lines, expect, forbid, expect_order, expect_one_path,
    check_expect, control_check_expect) are whole lines: see line_pattern."""

    name: str
    installer: str                       # guest/<installer> builds the stack
    disks: tuple[str, ...]               # sizes of the blank stack disks (qemu-img)
    root: str                            # root= for booting the stack
    closed: tuple[str, ...]              # devices that must be gone at the inventory,
                                         # closed by exitrd or removed by the kernel
    # ... of which exitrd's own step must have closed these (its ioctl did the work; not
    # the kernel's deferred removal or loop autoclear).
    closed_by_exitrd: tuple[str, ...] = ()
    # The checks (names, or the start of names) that pass with the package and must FAIL
    # in the control: the proof that the scenario's checks can fail.
    control_fails: tuple[str, ...] = ()
    kernel_lines: tuple[str, ...] = ()   # kernel lines expected at a clean shutdown
    release: str = "trixie"
    extra_packages: tuple[str, ...] = ()
    # Installed natively on the host in a chroot copy of the rootfs (contrib enabled, with
    # linux-headers for its kernel): DKMS modules such as zfs-dkms, whose build under TCG
    # would take far too long. A stage of its own, cached by these inputs.
    native_packages: tuple[str, ...] = ()
    in_suite: bool = True                # False: too slow for CI; run by hand (`vm.py run`)
    busybox_in_initramfs: bool = True    # False: BUSYBOX=n (cryptsetup-initramfs forces y)
    # Appended to the stack's initramfs.conf. zstd -1 trims the compression step; most of
    # update-initramfs's time under TCG is module copying for MODULES=most (~1 min on
    # trixie, ~8 min with bookworm's initramfs-tools 0.142), so only the modules this
    # machine's root needs go in (MODULES=dep; the test VMs are the installer's hardware).
    initramfs_conf: tuple[str, ...] = ("COMPRESSLEVEL=1", "MODULES=dep")
    check_md: bool = True                # the check boot reports the md arrays' state
    timeout_test: int = TIMEOUT_TEST
    # Fault injection and extra expectations:
    test_extra: str | None = None        # guest/<script> run by the test boot before poweroff
    append: str = ""                     # extra kernel command line for the test boot
    expect: tuple[str, ...] = ()         # more lines required in the test boot's log
    forbid: tuple[str, ...] = ()         # lines that must not appear in it
    left: tuple[str, ...] = ()           # devices the exitrd must report as left (else none)
    control: bool = True                 # the suite also runs it without the package
    inventory: bool = True               # the exitrd must log its inventory line
    pivot: bool = True                   # systemd must switch into the exitrd
    final_line: str = POWER_DOWN         # the kernel's last word for the verb used
    max_shutdown: float | None = None    # bound (s) on "Syncing filesystems" -> final line
    check_boot: bool = True              # boot once more to check the marker and the disks
    # Test boot media: "pkg" = disks with the package and the initrd with the payload;
    # "base+deb" = disks and initrd without it, the .deb on the HARNESS disk (installed
    # on the running system); "pkg-plain" = disks with the package, initrd without it.
    media: str = "pkg"
    # A live system (live-boot): no installer VM; live_medium() builds the boot medium on
    # the host with the installer script (base: without the package; pkg: with it).
    live: bool = False
    control_gave_up: str | None = None   # Rx of systemd giving up in the control
    expect_order: tuple[str, ...] = ()   # lines the test boot's log has in this order
    # Where the kernel may take either of several paths (a race the harness cannot pin
    # down), the log must hold every line of exactly one of these; the summary names it.
    expect_one_path: tuple[tuple[str, ...], ...] = ()
    # The check boot runs guest/<check_extra> as run.sh (it may run check.sh itself) and
    # its log must hold check_expect; the control's check boot must hold
    # control_check_expect (the difference the package makes on disk).
    check_extra: str | None = None
    check_expect: tuple[str, ...] = ()
    control_check_expect: tuple[str, ...] = ()
    # Network root: disk0 is not attached to the stack's boots (pkg, test, check); the
    # host serves it over NBD from 127.0.0.1 and the guest reaches it through user-mode
    # networking (see nbd_export). The installer still writes it as a virtio disk.
    nbd_root: bool = False
    nbd_stop_on: str | None = None       # test boot: the host freezes the server at this line
    nbd_stop_on_control: str | None = None   # ... and in the control's test boot

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.release}"


SCENARIOS: dict[str, Scenario] = {}   # by ident, "name@release"


def scenario(releases: tuple[str, ...] = ("trixie",), **kw) -> None:
    """Declare a scenario on one or more releases."""
    for r in releases:
        s = Scenario(release=r, **kw)
        SCENARIOS[s.ident] = s


# The root stack: exitrd itself stops md0 (no deferred removal for MD). On trixie,
# systemd flags the LV and the LUKS mapping for deferred removal before the pivot, so the
# kernel usually removes them as the root is unmounted (the inventory says which).
LVM_LUKS_MD = dict(installer="install-lvm-luks-md.sh", disks=("4G", "4G"),
                   root="/dev/mapper/vg0-root", closed=("vg0-root", "md0_crypt", "md0"),
                   closed_by_exitrd=("md0",))
MD0_STOPPED = "md: md0 stopped."
scenario(
    releases=("trixie", "bookworm"), name="lvm-luks-md", **LVM_LUKS_MD,
    kernel_lines=(MD0_STOPPED,),
    expect=("exitrd: unmounted /oldroot (ext4 on /dev/mapper/vg0-root)",
            "exitrd: stopped MD array md0 (raid1)"),
    control_fails=(f"kernel logged '{MD0_STOPPED}'", "closed (by exitrd or the kernel)"),
)

# A second stack, built by a system-shutdown hook after systemd's own teardown: neither
# deferred removal nor loop autoclear applies, so exitrd's own DM_DEV_REMOVE (plain DM
# and dm-crypt), STOP_ARRAY and LOOP_CLR_FD each have to do the work.
scenario(
    name="late-stack", **{**LVM_LUKS_MD,
                          "closed_by_exitrd": ("late-top", "late_crypt", "md9", "loop0",
                                               "loop1", "md0")},
    test_extra="late-stack.sh",
    kernel_lines=(MD0_STOPPED, "md: md9 stopped."),
    expect=("harness: late stack: /run/late-mnt on late-top, late_crypt, md9, loop0 loop1",
            "exitrd: unmounted /oldroot/run/late-mnt (ext4 on /dev/mapper/late-top)",
            "exitrd: removed device-mapper device late-top (dm-*)",
            "exitrd: closed dm-crypt mapping late_crypt (dm-*): key wiped from memory",
            "exitrd: stopped MD array md9 (raid1)",
            "exitrd: detached loop device loop0 from /run/late1.img",
            "exitrd: detached loop device loop1 from /run/late2.img"),
    control_fails=("exitrd closed late-top, late_crypt, md9, loop0, loop1, md0 itself",
                   "kernel logged 'md: md9 stopped.'"),
)

# The fault matrix: each fault reaches the exitrd (systemd ends every ordinary process
# before it switches), and the exitrd must still power off within its deadline (60 s by
# default, plus a margin) with the marker intact on the next boot.
FAULT_STACK = dict(**LVM_LUKS_MD, max_shutdown=75.0)
scenario(
    name="fault-held-root", **FAULT_STACK, kernel_lines=(MD0_STOPPED,),
    test_extra="fault-held-root.sh",
    expect=("exitrd:   /oldroot is held by * (@holder, spared as @) via working directory /oldroot, open file /oldroot/root/held",
            "exitrd: sending SIGKILL to 1 process(es): *@holder*",
            "exitrd: unmounted /oldroot (ext4 on /dev/mapper/vg0-root)"),
    control_fails=("log has 'exitrd:   /oldroot is held by", "log has 'exitrd: sending SIGKILL"),
)
scenario(
    name="fault-hook-hang", **FAULT_STACK, kernel_lines=(MD0_STOPPED,),
    test_extra="fault-hook-hang.sh",
    expect=("harness: hang hook in the payload, with /bin/sh",
            "exitrd: hook unmounted/50-hang: still running after 10s: killed, going on"),
    control_fails=("log has 'exitrd: hook unmounted/50-hang",),
)
scenario(
    name="fault-dm-suspended", **FAULT_STACK, left=("fault",),
    test_extra="fault-dm-suspended.sh",
    expect=("harness: fault: /run/fault-mnt on suspended dm 'fault' over /dev/loop0",
            "exitrd: could not unmount /oldroot/run/fault-mnt (ext4 on /dev/mapper/fault): timed out*"),
    control_fails=("log has 'exitrd: could not unmount /oldroot/run/fault-mnt",
                   "exitrd left fault"),
)
scenario(
    name="fault-panic", **{**FAULT_STACK, "closed": (), "closed_by_exitrd": ()},
    inventory=False, test_extra="fault-panic.sh", append="exitrd.fault=panic",
    expect=("exitrd: internal error: *test fault exitrd.fault=panic*",
            "exitrd: unmounted /oldroot (ext4 on /dev/mapper/vg0-root)",
            "exitrd: powering off"),
    control_fails=("log has 'exitrd: internal error:",),
)
scenario(
    name="fault-bad-input", **FAULT_STACK, kernel_lines=(MD0_STOPPED,),
    test_extra="fault-config.sh", append="exitrd.fault=verb:sing",
    final_line="reboot: Restarting system",
    expect=('exitrd: unknown verb "sing": rebooting',
            "exitrd: /exitrd.conf: line 1: bad value*",
            'exitrd: /exitrd.conf: line 2: unknown key "colour"*',
            "exitrd: rebooting"),
    control_fails=("log has 'exitrd: unknown verb", "VM ended by itself with 'reboot: Restarting"),
)

# The administrator's side (issue 5): installed on a running system, the package makes
# the very next shutdown go through the exitrd without a reboot (exitrd.service repairs
# /run/initramfs from the installed files); with no payload in the initramfs and the
# unit masked, 'exitrd status' must say so and exit 1.
scenario(
    name="install-running", **LVM_LUKS_MD, kernel_lines=(MD0_STOPPED,),
    media="base+deb", test_extra="install-running.sh", timeout_test=1200,
    expect=("harness: status before poweroff: exit 0", 'harness: status:   "ready": true,',
            'harness: status:   "payload_version": "*",'),
    control_fails=("log has 'harness: status before poweroff: exit 0'",
                   f"kernel logged '{MD0_STOPPED}'"),
)
scenario(
    name="status-not-ready", **{**LVM_LUKS_MD, "closed": (), "closed_by_exitrd": ()},
    inventory=False, pivot=False,
    media="pkg-plain", append="systemd.mask=exitrd.service", check_boot=False,
    test_extra="status-not-ready.sh",
    expect=("harness: status exit 1", "harness: status: exitrd status: NOT READY*",
            "harness: status:*fix: systemctl restart exitrd.service*"),
    forbid=("systemd-shutdown[1]: Successfully changed into root pivot.",),
    control_fails=("log has 'harness: status exit 1'",),
)

scenario(
    name="purge", **{**LVM_LUKS_MD, "closed": (), "closed_by_exitrd": ()},
    inventory=False, pivot=False, check_boot=False,
    test_extra="purge.sh", timeout_test=1200,
    expect=("harness: purge: clean: no exitrd file, unit or initramfs entry left, "
            "/run/initramfs empty",),
    forbid=("systemd-shutdown[1]: Successfully changed into root pivot.",
            "harness: purge: left behind: *"),
    control_fails=("log has 'harness: purge: clean:",),
)

# ZFS pool "tank" on LUKS2 (root: plain ext4). zfs-dkms is compiled natively in a chroot
# copy of the rootfs: 9.5 min of CPU (33 min wall on 2 busy cores), and the stack's
# installer and package boots load the zfs module and update-initramfs slowly under TCG
# (7-12 min each on busy cores): over the CI budget, so not in `suite`. By hand:
#   python3 tests/vm/vm.py run zfs-luks [--control]
scenario(
    name="zfs-luks", installer="install-zfs-luks.sh", disks=("4G", "1G"), root="/dev/vda",
    closed=("tank_crypt",), native_packages=("zfs-dkms", "zfsutils-linux"), in_suite=False,
    check_md=False, test_extra="test-zfs-luks.sh", check_extra="check-zfs-luks.sh",
    control_gave_up=Rx(r"systemd-shutdown\[1\]: Unable to finalize remaining "
                       r"(file systems, )?DM devices, ignoring\."),
    expect=("exitrd: zfs: exported pool tank",),
    # systemd moves the busy dataset to /run/shutdown/mounts/<hash> before the pivot.
    expect_order=(Rx(r"exitrd: unmounted /oldroot/\S+ \(zfs on tank/data\)"),
                  "exitrd: zfs: exported pool tank",
                  # ...or the kernel removed it as the export let go of it (systemd
                  # flagged it for deferred removal before the pivot).
                  Rx(r"exitrd: (closed dm-crypt mapping tank_crypt \(dm-\d+\): key wiped "
                     r"from memory|tank_crypt \(dm-\d+\) is gone: .*)")),
    check_expect=("harness: zfs label state=exported",
                  "harness: zfs import as another host without -f: ok",
                  "harness: zfs data: marker ok"),
    control_check_expect=("harness: zfs label state=active",
                          "harness: zfs import as another host without -f: failed"),
    control_fails=("check boot log has 'harness: zfs label state=exported'",),
)

# Debian Live / Tails (issue 4): live-boot (boot=live) mounts the boot medium (disk0, ext4,
# /dev/vda) on /run/live/medium, live/filesystem.squashfs from it through loop0 on
# /run/live/rootfs/filesystem.squashfs, and an overlay with a tmpfs upper layer
# (/run/live/overlay) as /. No root= (live-boot finds the medium). Nothing persists,
# so there is no check boot.
scenario(
    name="live", installer="install-live.sh", disks=(), root="", live=True,
    initramfs_conf=("COMPRESSLEVEL=1", "MODULES=list"),
    # init_on_free=1 as Tails: the pages the overlay frees are zeroed. Under TCG and host
    # load that made the overlay's unmount take 4-6 s even after dropping the clean cache
    # (guest/live-diag.sh), and once over 60 s without: more step time than the default 10 s.
    append="boot=live init_on_free=1 exitrd.step_timeout=30s",
    # loop0 goes by the kernel's autoclear (systemd's failed LOOP_CLR_FD set it).
    closed=("loop0",), check_boot=False, check_md=False, test_extra="live-diag.sh",
    timeout_test=900,
    kernel_lines=("EXT4-fs (vda): unmounting filesystem*",),
    # systemd unmounts both layers' mounts (the overlay keeps its own references) and
    # moves the busy medium to /run/shutdown/mounts; loop0 gets LO_FLAGS_AUTOCLEAR from
    # systemd's failed LOOP_CLR_FD, so it goes as soon as the overlay releases the squashfs.
    expect=("harness: running initramfs tmpfs: rw,nosuid,nodev*",
            "systemd-shutdown[1]: Moving mount /run/live/medium to /run/shutdown/mounts/*",
            "systemd-shutdown[1]: Could not detach loopback /dev/loop0: Device or resource busy"),
    expect_order=(
        "exitrd: moved /oldroot/run/shutdown/mounts/* to *: still needed",
        "exitrd: unmounted /oldroot (overlay on overlay)",
        "EXT4-fs (vda): unmounting filesystem*",
        "exitrd: inventory: closed: none; removed by the kernel: loop0; left: none"),
    forbid=("exitrd: could not *",),
    control_gave_up=Rx(r"systemd-shutdown\[1\]: Unable to finalize remaining "
                       r"(file systems, )?loop devices, ignoring\."),
    control_fails=("kernel logged 'EXT4-fs (vda): unmounting filesystem",),
)

# Three rows of issue 4 in one stack: / on an LVM thin volume whose pool's data LV has a
# writeback dm-cache; the cache PV is an MD RAID1 whose write-intent bitmap is a file on
# a third partition, mounted by the initramfs on /run/md-bitmap (see the installer). The
# exitrd must move that mount out of the old root, stop md1, then unmount it. The check
# boot reads dm-cache's dirty count before anything writes; the control gets one too.
scenario(
    name="lvm-cache-thin", installer="install-lvm-cache-thin.sh", disks=("4G", "512M", "512M"),
    root="/dev/mapper/vg0-root", extra_packages=("fdisk", "thin-provisioning-tools"),
    closed=("vg0-root", "vg0-pool-tpool", "vg0-pool_tdata", "vg0-pool_tdata_corig",
            "vg0-cpool_cpool_cdata", "vg0-cpool_cpool_cmeta", "vg0-pool_tmeta", "md1"),
    closed_by_exitrd=("md1",),
    kernel_lines=("md: md1 stopped.",),
    test_extra="lvm-cache-thin-test.sh", check_extra="lvm-cache-thin-check.sh",
    # systemd-shutdown moves the busy /run/md-bitmap to /run/shutdown/mounts/<id> first.
    expect_order=(
        "exitrd: moved /oldroot/run/* to *: still needed",
        "exitrd: unmounted /oldroot (ext4 on /dev/mapper/vg0-root)",
        "exitrd: stopped MD array md1 (raid1)", "exitrd: unmounted /exitrd-held/*"),
    forbid=("exitrd: could not unmount /exitrd-held/*",),
    check_expect=("harness: cache: dirty below used: the clean shutdown was recorded*",
                  "harness: thin pool: no needs_check*"),
    control_check_expect=("harness: cache: every used block dirty: unclean shutdown*",),
    control_fails=("check boot log has 'harness: cache: dirty below used",
                   "kernel logged 'md: md1 stopped.'"),
)

# NBD root (issue 4): ext4 on /dev/nbd0, served by the host (qemu-nbd on 127.0.0.1, see
# nbd_export), connected by nbd-client in the initramfs (nbdroot=, ip=dhcp, -persist
# -systemd-mark). The exitrd must unmount the root while the network still works, then
# disconnect nbd0 (NBD_DISCONNECT, NBD_CLEAR_SOCK) and report it closed.
NBD_STACK = dict(installer="install-nbd-root.sh", disks=("3G",), root="/dev/nbd0",
                 extra_packages=("nbd-client",), nbd_root=True, check_md=False,
                 test_extra="nbd-test.sh")
scenario(
    name="nbd-root", **NBD_STACK, closed=("nbd0",), closed_by_exitrd=("nbd0",),
    # Without the package systemd only remounts / read-only and calls it done; nbd0
    # stays connected (the kernel never logs a disconnect).
    control_gave_up=Rx(r"systemd-shutdown\[1\]: All filesystems, swaps, loop devices, "
                       r"MD devices and DM devices detached\."),
    kernel_lines=("EXT4-fs (nbd0): unmounting filesystem*",
                  "block nbd0: Disconnected due to user request."),
    expect=("harness: nbd: root: /dev/nbd0 ext4*",),
    forbid=("*I/O error*", "*Dead connection*", "*Receive control failed*"),
    expect_order=("exitrd: unmounted /oldroot (ext4 on /dev/nbd0)",
                  "exitrd: disconnected network block device nbd0",
                  "exitrd: inventory: closed: nbd0; removed by the kernel: none; left: none"),
    control_fails=("kernel logged 'block nbd0: Disconnected due to user request.'",),
)
# ... and the server gone: a spared '@' writer keeps dirtying a file on / (so systemd
# cannot remount it read-only), and the host freezes qemu-nbd (SIGSTOP: no answer, no
# FIN) as systemd switches into the exitrd. Writes to nbd0 then hang in flight; the
# exitrd must abandon what waits for them, refuse to disconnect nbd0 under a file system
# that still has unwritten data (left, with the reason) and power off within its
# deadline. The freeze races with the exitrd's first sync, so the kernel takes one of
# two paths: (a) that sync is caught, the writer sticks in the kernel through SIGKILL,
# and the root is detached lazily (its read-only remount either waits behind the stuck
# sync and times out, or is refused at once, busy: both seen); (b) that sync completes,
# the writer dies, and the unmount itself passes the busy check and then waits for the
# writeback (the mount is gone, its superblock stays). (Frozen earlier, at
# systemd-shutdown's first sync, systemd itself waits out its sync timeout and then 90 s
# for D-state processes: no pivot within 420 s.) The control (no exitrd, so no pivot
# line) freezes the server at the same point of the shutdown: when systemd-shutdown runs
# its system-shutdown hooks, right before it would switch.
scenario(
    name="nbd-server-gone", **{**NBD_STACK, "test_extra": "nbd-server-gone.sh"},
    nbd_stop_on="systemd-shutdown[1]: Successfully changed into root pivot.",
    nbd_stop_on_control="harness: pre-pivot argv: poweroff",
    check_boot=False, closed=(), left=("nbd0",), max_shutdown=75.0,
    control_gave_up=Rx(r"systemd-shutdown\[1\]: All filesystems, swaps, loop devices, "
                       r"MD devices and DM devices detached\."),
    expect=("harness: nbd: writer started*", "exitrd: sync: timed out*",
            "exitrd:   /oldroot is held by * (@nbd-writer, spared as @)*",
            "exitrd: nbd: /dev/nbd0 is still in use, not disconnected*"),
    expect_one_path=(
        ("exitrd: * did not die (stuck in the kernel?): *",
         "exitrd: detached busy /oldroot lazily*"),
        ("exitrd: sending SIGKILL to 1 process(es): *",
         "exitrd: could not unmount /oldroot (ext4 on /dev/nbd0): timed out*"),
    ),
    forbid=("exitrd: disconnected network block device nbd0",),
    control_fails=("log has 'exitrd: sync: timed out", "exitrd left nbd0"),
)

# --------------------------------------------------------------------------- helpers

# The suite runs scenarios in parallel threads: each thread's lines carry its label.
CONTEXT = threading.local()
PRINT_LOCK = threading.Lock()


def say(msg: str) -> None:
    label = getattr(CONTEXT, "label", "")
    with PRINT_LOCK:
        print(f"[vm] {label + ': ' if label else ''}{msg}", flush=True)


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


def list_initrd(rf: Path, image: Path) -> None:
    """Writes IMAGE.list: the image's files, listed by the release's own lsinitramfs run
    natively in a chroot of the cached rootfs (under emulation it took a minute or more
    per image). For reading when a boot fails; nothing asserts on it."""
    tmp = rf / "rootfs/tmp" / f"list-{os.getpid()}-{threading.get_ident()}.img"
    try:
        shutil.copyfile(image, tmp)
        r = run(["chroot", rf / "rootfs", "lsinitramfs", f"/tmp/{tmp.name}"],
                capture_output=True, text=True, check=False)
        image.with_suffix(".list").write_text(r.stdout + r.stderr)
    finally:
        tmp.unlink(missing_ok=True)


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
    cpu: float = 0.0        # qemu's CPU time (user + system), s
    repeated: str = ""      # the emulator fault that cost an earlier attempt, if any

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
PARALLEL = False   # set by `suite` when it boots several guests at a time


def vm_cpus() -> int:
    return VM_CPUS or (1 if PARALLEL else 2)


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
         drives: list[Path], timeout: int, fmt: str = "qcow2", nbd: Nbd | None = None) -> Boot:
    with vm_slot(name):
        if nbd is None:
            return boot_now(name, rundir, kernel, initrd, append, drives, timeout, fmt)
        # The first drive is served over the network instead of being attached.
        with nbd_export(drives[0], rundir, name, nbd) as (net, extra):
            return boot_now(name, rundir, kernel, initrd, f"{append} {extra}", drives[1:],
                            timeout, fmt, net)


# Network roots (Scenario.nbd_root): qemu-nbd serves the image on 127.0.0.1 only, at a
# free port; the guest's user-mode network is restricted (no route to any real network)
# and has one forward: connections to NBD_GUEST_ADDR:NBD_GUEST_PORT start a socat on the
# host that relays them to that port. The initramfs (nbd-client's local-top script)
# connects with nbdroot= after ip=dhcp (qemu's built-in DHCP server).
NBD_GUEST_ADDR = "10.0.2.100"
NBD_GUEST_PORT = 10809
NBD_EXPORT = "root"


@dataclasses.dataclass(frozen=True)
class Nbd:
    stop_on: str | None = None   # stop answering once the serial log shows this line


@contextlib.contextmanager
def nbd_export(image: Path, rundir: Path, name: str, nbd: Nbd):
    """Serve `image` over NBD for one boot; yields (qemu network args, kernel args)."""
    import socket
    import threading
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
    stop = threading.Event()

    def watch() -> None:
        serial = rundir / f"{name}.serial.log"
        while not stop.wait(0.3):
            try:
                text = serial.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            if nbd.stop_on in text:
                # Frozen, not killed: no FIN reaches the guest, its requests stay in
                # flight unanswered, as with a server that lost power or a cut cable.
                srv.send_signal(signal.SIGSTOP)
                msg = f"host: froze the NBD server (SIGSTOP) at {nbd.stop_on!r}"
                (rundir / f"{name}.nbd-stopped").write_text(f"{time.time():.3f}\n")
                say(f"boot {name}: {msg}")
                return

    watcher = threading.Thread(target=watch, daemon=True) if nbd.stop_on else None
    if watcher:
        watcher.start()
    net = ["-nic", f"user,model=virtio-net-pci,restrict=on,guestfwd=tcp:{NBD_GUEST_ADDR}:"
           f"{NBD_GUEST_PORT}-cmd:socat -lf /dev/null - TCP:127.0.0.1:{port}"]
    extra = (f"nbdroot={NBD_GUEST_ADDR}:{NBD_GUEST_PORT}/{NBD_EXPORT} ip=dhcp")
    try:
        yield net, extra
    finally:
        stop.set()
        if watcher:
            watcher.join()
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        log.close()


def boot_now(name: str, rundir: Path, kernel: Path, initrd: Path, append: str,
             drives: list[Path], timeout: int, fmt: str = "qcow2",
             net: list[str] | None = None) -> Boot:
    log_path = rundir / f"{name}.serial.log"
    base = list(QEMU_BASE) + ["-smp", str(vm_cpus())]
    if net is not None:
        i = base.index("-nic")
        base[i:i + 2] = net   # in place of "-nic none"
    cmd = base + [
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
        timed_out, status, cpu = False, None, 0.0
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
            else:
                time.sleep(0.2)
    b = Boot(name, log_path, time.monotonic() - t0, timed_out, timeout, p.returncode, cpu)
    log_path.touch()
    state = f"VM did not power off within {timeout} s" if timed_out else "exited"
    say(f"boot {name}: {state} after {b.wall:.0f} s (qemu CPU {cpu:.0f} s, {vm_cpus()} vCPU)")
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
               setup, timeout: int, nbd: Nbd | None = None) -> Boot:
    """boot() on the drives setup() makes; once more when the emulator broke the guest.
    The repeat is recorded in the Boot (`repeated`) and shown as such in every summary."""
    for attempt in (1, 2):
        b = boot(name, rundir, kernel, initrd, append, setup(), timeout, nbd=nbd)
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
        stat(f"{getattr(CONTEXT, 'label', '')} {name}: boot lost to a TCG emulation fault, REPEATED", b.wall)
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


INVENTORY = re.compile(
    r"exitrd: inventory: closed: (.*?); removed by the kernel: (.*?); left: (.*)")


def inventory(text: str) -> tuple[list[str], list[str], str] | None:
    """(closed by exitrd, removed by the kernel, left) from the inventory line."""
    # The exitrd writes each line to the console and to kmsg; console lines can be cut
    # by kernel lines, so prefer the kmsg copy (the one with a timestamp).
    found = {}
    names = lambda t: [n for n in re.split(r"[\s,]+", t.strip()) if n and n != "none"]
    for ts, msg in stamped(text):
        m = INVENTORY.fullmatch(msg)
        if m:
            found[ts is not None] = (names(m.group(1)), names(m.group(2)), m.group(3).strip())
    return found.get(True) or found.get(False)


def line_pattern(p: str) -> re.Pattern:
    """Expectations match whole lines. A plain string is literal text in which '*' stands
    for any run of characters (pids, device numbers, times); an Rx is a regex."""
    if isinstance(p, Rx):
        return re.compile(p)
    return re.compile(".*".join(re.escape(part) for part in p.split("*")))


def messages(text: str) -> list[str]:
    """The log's lines without their kernel timestamps."""
    return [msg for _, msg in stamped(text)]


def find_line(msgs: list[str], p: str, start: int = 0) -> int | None:
    rx = line_pattern(p)
    return next((i for i in range(start, len(msgs)) if rx.fullmatch(msgs[i])), None)


def has_line(msgs: list[str], p: str) -> bool:
    return find_line(msgs, p) is not None


# --------------------------------------------------------------------------- assertions

@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    info: bool = False   # shown, not asserted (a package check seen on a control)


def require_harness_ok(b: Boot, what: str) -> None:
    text = b.text
    if b.timed_out:
        raise SystemExit(f"{what}: VM did not power off within {b.timeout} s; "
                         f"serial log {b.log_path}\n{indent(tail(text, 60))}")
    if "run.sh exit=0" not in harness_lines(text):
        raise SystemExit(f"{what}: the guest script failed; serial log {b.log_path}\n"
                         + indent("\n".join(harness_lines(text)[-60:]) or tail(text, 60)))


def script_exit(b: Boot) -> str | None:
    """The test boot's own script's exit status, as the harness logged it."""
    for l in harness_lines(b.text):
        if l.startswith("run.sh exit="):
            return l[len("run.sh exit="):]
    return None


def checks_test_boot(s: Scenario, b: Boot) -> list[Check]:
    text = b.text
    msgs = messages(text)
    excerpt = shutdown_excerpt(text)
    c = []
    ended = not b.timed_out and has_line(msgs, s.final_line)
    c.append(Check(f"VM ended by itself with '{s.final_line}'", ended, b.why_not_off()))
    rc = script_exit(b)
    c.append(Check("test boot script exited 0", rc == "0", f"run.sh exit={rc}"))
    c.append(Check("marker written", has_line(msgs, "harness: marker written"), "absent"))
    if s.max_shutdown is not None:
        secs = shutdown_seconds(text, s.final_line)
        c.append(Check(f"shutdown within {s.max_shutdown:.0f} s", secs is not None
                       and secs <= s.max_shutdown, f"took {secs} s"))
    if s.pivot:
        missing = [l for l in pinned(SWITCH_LINES, s.release) if not has_line(msgs, l)]
        c.append(Check("systemd switched into the exitrd", not missing, f"missing: {missing}"))
    inv = inventory(text)
    if not s.inventory:
        pass
    elif inv is None:
        c.append(Check("exitrd inventory line", False, "no 'exitrd: inventory:' line"))
    else:
        closed, by_kernel, left = inv
        if s.closed_by_exitrd:
            absent = [n for n in s.closed_by_exitrd if n not in closed]
            c.append(Check(f"exitrd closed {', '.join(s.closed_by_exitrd)} itself", not absent,
                           f"closed by exitrd: {closed}; by the kernel: {by_kernel}; "
                           f"not by exitrd: {absent}"))
        if s.closed:
            absent = [n for n in s.closed if n not in closed + by_kernel]
            c.append(Check(f"closed (by exitrd or the kernel): {', '.join(s.closed)}",
                           not absent, f"closed: {closed}; by the kernel: {by_kernel}; "
                           f"not closed: {absent}"))
        if s.left:
            missing = [n for n in s.left if n not in left]
            c.append(Check(f"exitrd left {', '.join(s.left)}", not missing, f"left: {left}"))
        else:
            c.append(Check("exitrd left none", left == "none", f"left: {left}"))
    for l in s.kernel_lines:
        c.append(Check(f"kernel logged '{l}'", has_line(msgs, l), "absent"))
    if s.pivot:
        gave_up = [m for m in msgs if GAVE_UP.fullmatch(m)]
        c.append(Check("systemd did not give up ('Unable/Failed to finalize')", not gave_up,
                       f"present: {gave_up}"))
    for l in s.expect:
        c.append(Check(f"log has '{l}'", has_line(msgs, l), "absent"))
    for l in s.forbid:
        c.append(Check(f"log lacks '{l}'", not has_line(msgs, l), "present"))
    if s.expect_one_path:
        taken = [i for i, p in enumerate(s.expect_one_path) if all(has_line(msgs, l) for l in p)]
        paths = " | ".join(" + ".join(f"'{l}'" for l in p) for p in s.expect_one_path)
        c.append(Check(f"log shows one path of: {paths}", len(taken) == 1,
                       "none complete" if not taken else f"several complete: {taken}"))
        if taken:
            c.append(Check(f"path taken: {chr(ord('a') + taken[0])}", True))
    if s.expect_order:
        pos, missing = 0, None
        for pat in s.expect_order:
            i = find_line(msgs, pat, pos)
            if i is None:
                missing = pat
                break
            pos = i + 1
        c.append(Check("in order: " + " < ".join(f"'{p}'" for p in s.expect_order),
                       missing is None, f"no '{missing}' after the ones before it"))
    for x in c:
        if not x.ok:
            x.detail += f"\n  shutdown part of {b.log_path}:\n" + indent(excerpt)
            break
    return c


def checks_check_boot(s: Scenario, b: Boot, token: str) -> list[Check]:
    """What the next boot finds. The marker, the arrays' sync state and fsck tell whether
    the data survived; they pass after stock Debian's shutdown too (systemd remounts /
    read-only and syncs, MD marks an idle array clean by itself), so they are named for
    what they measure. check_expect holds the ones that tell a clean close from an
    unclean one (dm-cache's dirty blocks, ZFS labels)."""
    text = b.text
    hl = harness_lines(text)
    c = [Check("check boot powered off", b.powered_off, b.why_not_off())]
    marker = next((l[len("marker="):] for l in hl if l.startswith("marker=")), None)
    c.append(Check("data intact: marker survived", marker == token,
                   f"marker={marker!r}, token={token!r}"))
    if s.check_md:
        md = [l for l in hl if l.startswith("mdstat ")]
        busy = [l for l in md if re.search(r"resync|recover|reshape|check", l)]
        c.append(Check("data intact: md arrays idle (no resync/recovery)", bool(md) and not busy,
                       "\n" + indent("\n".join(md) or "no mdstat lines")))
        unclean = [msg for _, msg in stamped(text) if "not clean -- starting background" in msg]
        c.append(Check("data intact: md not marked unclean at assembly", not unclean,
                       "; ".join(unclean)))
    msgs = messages(text)
    for l in s.check_expect:
        c.append(Check(f"check boot log has '{l}'", has_line(msgs, l), "absent"))
    fsck = [l[len("fsck "):] for l in hl if l.startswith("fsck ")]
    if fsck:
        clean = any(re.search(r": clean, \d+/\d+ files", l) for l in fsck)
        dirty = [l for l in fsck if re.search(r"recovering journal|was not cleanly unmounted", l)]
        c.append(Check("data intact: root fs clean at next boot (initramfs fsck)",
                       clean and not dirty, "\n" + indent("\n".join(fsck))))
    for x in c:
        if not x.ok:
            x.detail += f"\n  harness lines of {b.log_path}:\n" + indent("\n".join(hl[-30:]))
            break
    return c


def checks_control(s: Scenario, b: Boot, cb: Boot | None, token: str) -> list[Check]:
    """The control runs every check of the package run on its own boots. It passes when
    the facts of a shutdown without exitrd hold (systemd never switched, gave up on the
    storage; its own script ran fine) and every check named in `control_fails` FAILS
    here, while the package run needs it to pass: proof that the check can fail. The
    other package checks are shown for information."""
    msgs = messages(b.text)
    unable = (Rx(s.control_gave_up) if s.control_gave_up else pinned(UNABLE_FINALIZE, s.release))
    switch = pinned(SWITCH_LINES, s.release)
    rc = script_exit(b)
    c = [Check("VM powered off by itself", b.powered_off, b.why_not_off()),
         Check("test boot script exited 0", rc == "0", f"run.sh exit={rc}"),
         Check("no switch into an exitrd", not any(has_line(msgs, l) for l in switch),
               "switched"),
         Check(f"systemd gave up: '{unable}'", has_line(msgs, unable), "absent")]
    if cb is not None:
        cmsgs = messages(cb.text)
        c.append(Check("check boot powered off", cb.powered_off, cb.why_not_off()))
        for l in s.control_check_expect:
            c.append(Check(f"check boot log has '{l}'", has_line(cmsgs, l), "absent"))
    pkg = checks_test_boot(s, b) + (checks_check_boot(s, cb, token) if cb is not None else [])
    if not s.control_fails:
        c.append(Check("the scenario names the checks its control must fail", False,
                       "control_fails is empty"))
    for name in s.control_fails:
        found = [x for x in pkg if x.name.startswith(name)]
        c.append(Check(f"fails without the package: {name}", bool(found) and not any(
            x.ok for x in found), "no such check" if not found else "it passed"))
    named = {x.name for x in pkg if any(x.name.startswith(n) for n in s.control_fails)}
    c += [dataclasses.replace(x, info=True, detail=x.detail.split("\n")[0])
          for x in pkg if x.name not in named]
    return c


# --------------------------------------------------------------------------- stages

@functools.cache
def rootfs(release: str, extra: tuple[str, ...] = ()) -> Path:
    """A release's debootstrap with the harness; with `extra`, that plus those packages
    (installed in a chroot copy: a second debootstrap would cost twice the time)."""
    if extra:
        return rootfs_plus(rootfs(release), release, tuple(sorted(set(extra))), native=False)
    packages = sorted(BASE_PACKAGES)
    key = key_of("rootfs", ROOTFS_RECIPE, EPOCH, release, MIRROR, packages, guest_text("harness.sh"),
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
        stat(f"rootfs {release}: debootstrap and image", time.monotonic() - t0)

    return cached(f"rootfs-{release}", key, build)


@functools.cache
def rootfs_native(release: str, extra: tuple[str, ...], native: tuple[str, ...]) -> Path:
    """rootfs() plus packages too slow to set up under TCG (DKMS builds)."""
    base = rootfs(release, extra)
    if not native:
        return base
    return rootfs_plus(base, release, tuple(sorted(set(native))), native=True)


@functools.cache
def rootfs_plus(base: Path, release: str, packages: tuple[str, ...], native: bool) -> Path:
    """`base` plus packages installed by apt in a chroot copy of it on the host. `native`:
    DKMS modules, so contrib is enabled and the rootfs kernel's headers come along."""
    kind = "native" if native else "plus"
    key = key_of(f"rootfs-{kind}", base.name, MIRROR, packages)

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        root = tmp / "rootfs"
        run(["cp", "-a", "--reflink=auto", base / "rootfs", root])
        kver = (base / "kernel-version").read_text().strip()
        components = "main contrib" if native else "main"
        (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {release} {components}\n")
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        log = tmp / "apt.log"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
        mounts = [("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev")]
        headers = [f"linux-headers-{kver}"] if native else []
        done = []
        try:
            for fs, d in mounts:
                run(["mount", "-t", fs, fs, root / d])
                done.append(root / d)
            say(f"{release}: apt-get install {' '.join(packages)} in a chroot (log {log})")
            with open(log, "w") as f:
                for cmd in (["apt-get", "update"],
                            ["apt-get", "install", "-y", "--no-install-recommends",
                             *headers, *packages]):
                    r = subprocess.run(["chroot", root] + cmd, stdout=f,
                                       stderr=subprocess.STDOUT, env=env)
                    if r.returncode:
                        raise SystemExit(f"{cmd} failed, see {log}:\n"
                                         f"{indent(tail(log.read_text()))}")
                if native and (root / "usr/sbin/dkms").exists():  # built for its kernel?
                    run(["chroot", root, "dkms", "autoinstall", "-k", kver], stdout=f,
                        stderr=subprocess.STDOUT, env=env)
                    run(["chroot", root, "dkms", "status"], stdout=f, stderr=subprocess.STDOUT)
                run(["chroot", root, "apt-get", "clean"], stdout=f, stderr=subprocess.STDOUT)
        finally:
            for d in reversed(done):
                run(["umount", "-l", d], check=False)
            policy.unlink(missing_ok=True)
        shutil.copyfile(base / "rootfs/etc/apt/sources.list", root / "etc/apt/sources.list")
        shutil.copyfile(base / "rootfs/etc/resolv.conf", root / "etc/resolv.conf")
        shutil.copyfile(base / "vmlinuz", tmp / "vmlinuz")
        shutil.copyfile(sorted((root / "boot").glob("initrd.img-*"))[-1], tmp / "initrd.img")
        (tmp / "kernel-version").write_text(kver + "\n")
        used = int(run(["du", "-sm", root], capture_output=True, text=True).stdout.split()[0])
        run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", root, tmp / "rootfs.img",
             f"{max(3072, used * 2)}M"], stdout=subprocess.DEVNULL)
        secs = time.monotonic() - t0
        (tmp / "build-seconds").write_text(f"{secs:.0f}\n")
        stat(f"rootfs {release} + {' '.join(packages)} ({kind}: apt in a chroot)", secs)

    return cached(f"rootfs-{release}-{kind}", key, build)


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
    if s.live:
        return live_medium(s, None)
    rf = rootfs_native(s.release, s.extra_packages, s.native_packages)
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
        list_initrd(rf, tmp / "initrd-plain.img")
        shutil.copyfile(rf / "vmlinuz", tmp / "vmlinuz")
        shutil.rmtree(work)
        stat(f"{s.ident}: stage base (installer boot)", b.wall)

    return cached(f"base-{stack_name(s)}-{s.release}", key, build)


@functools.cache
def live_medium(s: Scenario, deb: Path | None) -> Path:
    """A live system's boot medium, built on the host as live-build does: the scenario's
    installer script runs in a chroot of a copy of the cached rootfs (own PID and mount
    namespaces, only /proc mounted) and installs live-boot, and the package when `deb` is
    given; the tree is squashed into live/filesystem.squashfs on an ext4 disk
    (disk0.qcow2), the chroot's kernel and initrd beside it. The base stage (no package,
    initrd-plain.img) and the pkg stage (initrd-exitrd.img) of a live scenario."""
    rf = rootfs(s.release, s.extra_packages)
    deb_sha = sha256_file(deb) if deb else None
    key = key_of("live", rf.name, MIRROR, s.installer, guest_text(s.installer),
                 s.initramfs_conf, deb_sha)
    stage = "pkg" if deb else "base"

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        root = tmp / "root"
        run(["cp", "-a", "--reflink=auto", rf / "rootfs", root])
        (root / "tmp/install-live.sh").write_text(guest_text(s.installer))
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
               f"INITRAMFS_CONF={' '.join(s.initramfs_conf)}"]
        if deb:
            shutil.copyfile(deb, root / "tmp/exitrd.deb")
            env.append("LIVE_DEB=/tmp/exitrd.deb")
        log = tmp / "install-live.log"
        say(f"{s.ident}: live medium ({stage}): chroot on the host (log {log})")
        with open(log, "w") as f:
            r = subprocess.run(["unshare", "--pid", "--fork", f"--mount-proc={root}/proc",
                                "chroot", root, *env, "sh", "/tmp/install-live.sh"],
                               stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise SystemExit(f"{s.installer} failed, see {log}:\n{indent(tail(log.read_text()))}")
        shutil.copyfile(rf / "rootfs/etc/resolv.conf", root / "etc/resolv.conf")
        for f in ("tmp/install-live.sh", "tmp/exitrd.deb"):
            (root / f).unlink(missing_ok=True)
        boot = root / "boot"
        shutil.copyfile(next(boot.glob("vmlinuz-*")), tmp / "vmlinuz")
        shutil.copyfile(next(boot.glob("initrd.img-*")), tmp / f"initrd-{'exitrd' if deb else 'plain'}.img")
        t1 = time.monotonic()
        medium = tmp / "medium"
        (medium / "live").mkdir(parents=True)
        squash = medium / "live/filesystem.squashfs"
        run(["mksquashfs", root, squash, "-noappend", "-quiet", "-no-progress", "-comp", "zstd",
             "-Xcompression-level", "3", "-wildcards", "-e", "boot/initrd.img-*"],
            stdout=subprocess.DEVNULL)
        t2 = time.monotonic()
        size_m = squash.stat().st_size // (1 << 20) + 64
        img = tmp / "medium.img"
        run(["mkfs.ext4", "-q", "-F", "-L", "LIVEMEDIUM", "-d", medium, img, f"{size_m}M"],
            stdout=subprocess.DEVNULL)
        run(["qemu-img", "convert", "-O", "qcow2", img, tmp / "disk0.qcow2"])
        img.unlink()
        shutil.rmtree(medium)
        shutil.rmtree(root)
        msg = (f"chroot {t1 - t0:.0f} s, mksquashfs {t2 - t1:.0f} s, "
               f"squashfs {size_m - 64} MiB")
        (tmp / "build-info").write_text(msg + "\n")
        stat(f"{s.ident}: stage {stage} (live medium on the host: {msg})",
                      time.monotonic() - t0)

    return cached(f"{stage}-{stack_name(s)}-{s.release}", key, build)


def nbd_of(s: Scenario, test: bool = False, control: bool = False) -> Nbd | None:
    """How a boot of the stack (not its installer) gets disk0 when it is a network root."""
    if not s.nbd_root:
        return None
    if not test:
        return Nbd()
    return Nbd(stop_on=s.nbd_stop_on_control if control else s.nbd_stop_on)


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
    if s.live:
        return live_medium(s, deb)
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
                       f"root={s.root} ro", setup, TIMEOUT_INSTALL, nbd_of(s))
        require_harness_ok(b, f"{s.ident}: package install")
        if not debugfs_dump(hd, "/out/initrd-exitrd.img", tmp / "initrd-exitrd.img"):
            raise SystemExit(f"{s.ident}: package stage left no initrd-exitrd.img")
        list_initrd(rootfs_native(s.release, s.extra_packages, s.native_packages),
                    tmp / "initrd-exitrd.img")
        payload = [l for l in (tmp / "initrd-exitrd.list").read_text().splitlines()
                   if l.startswith("exitrd")]
        say(f"initrd-exitrd.img holds {len(payload)} exitrd payload entries")
        hd.unlink()
        (tmp / "deb.sha256").write_text(f"{deb_sha}  {deb.name}\n")
        stat(f"{s.ident}: stage pkg (package install boot)", b.wall)

    return cached(f"pkg-{stack_name(s)}-{s.release}", key, build)


# Benchmarks (tests/bench): Debian's dracut in place of initramfs-tools, with its shutdown
# module. The guests have no network: the .debs are fetched on the host in a chroot copy of
# the stack's rootfs (same sources, same dpkg state) and handed over on the HARNESS disk.
DRACUT_PACKAGES = ("dracut", "systemd-cryptsetup")


def fetch_debs(rf: Path, release: str, packages: tuple[str, ...], dest: Path) -> list[Path]:
    root = dest / "chroot"
    run(["cp", "-a", "--reflink=auto", rf / "rootfs", root])
    (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {release} main\n")
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    log = dest / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    with open(log, "w") as f:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--download-only",
                                            "--no-install-recommends", *packages]):
            r = subprocess.run(["chroot", root] + cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            if r.returncode:
                raise SystemExit(f"{cmd} failed, see {log}:\n{indent(tail(log.read_text()))}")
    for p in (root / "var/cache/apt/archives").glob("*.deb"):
        shutil.copyfile(p, dest / p.name)
    shutil.rmtree(root)
    return sorted(dest.glob("*.deb"))


def stack_dracut(s: Scenario) -> Path:
    """The base stack with dracut replacing initramfs-tools: disks and initrd-dracut.img."""
    base = stack_base(s)
    rf = rootfs_native(s.release, s.extra_packages, s.native_packages)
    key = key_of("dracut", base.name, rf.name, MIRROR, DRACUT_PACKAGES,
                 guest_text("install-dracut.sh"), guest_text("lib.sh"))

    def build(tmp: Path) -> None:
        debdir = tmp / "debs"
        debdir.mkdir()
        debs = fetch_debs(rf, s.release, DRACUT_PACKAGES, debdir)
        (tmp / "debs.txt").write_text("".join(f"{d.name}\n" for d in debs))
        hd = tmp / "harness.img"

        def setup() -> list[Path]:
            disks = [overlay(d, tmp / d.name) for d in base_disks(base)]
            make_harness_disk(hd, {"run.sh": guest_text("install-dracut.sh"),
                                   **{d.name: d for d in debs}},
                              {"OUT_INITRD": "initrd-dracut.img"})
            return disks + [hd]

        b = boot_fresh("install-dracut", tmp, base / "vmlinuz", base / "initrd-plain.img",
                       f"root={s.root} ro", setup, TIMEOUT_INSTALL)
        require_harness_ok(b, f"{s.ident}: dracut install")
        if not debugfs_dump(hd, "/out/initrd-dracut.img", tmp / "initrd-dracut.img"):
            raise SystemExit(f"{s.ident}: dracut stage left no initrd-dracut.img")
        hd.unlink()
        shutil.rmtree(debdir)
        stat(f"{s.ident}: stage dracut (dracut install boot)", b.wall)

    return cached(f"dracut-{stack_name(s)}-{s.release}", key, build)


# --------------------------------------------------------------------------- a test run

STATS: list[tuple[str, float]] = []


def stat(what: str, secs: float) -> None:
    STATS.append((what, secs))


@dataclasses.dataclass
class Result:
    label: str
    passed: bool
    checks: list[Check]
    rundir: Path
    test: Boot | None = None
    check: Boot | None = None
    error: str = ""
    wall: float = 0.0    # the whole scenario, stages it had to build included

    @property
    def repeats(self) -> list[str]:
        return [f"{b.name} boot repeated ({b.repeated})" for b in (self.test, self.check)
                if b is not None and b.repeated]


def run_scenario(s: Scenario, control: bool, capture: Path | None = None,
                 show_log: bool = False, keep: bool = False) -> Result:
    label = f"{s.ident}{' (control)' if control else ''}"
    CONTEXT.label = label
    t0 = time.monotonic()
    try:
        r = run_scenario_now(s, control, label, capture, show_log, keep)
    except Exception as e:  # a harness bug fails this scenario, not the whole suite
        r = Result(label, False, [], CACHE / "runs", error=f"{type(e).__name__}: {e}")
        report(r)
    finally:
        CONTEXT.label = ""
    r.wall = time.monotonic() - t0
    return r


def run_scenario_now(s: Scenario, control: bool, label: str, capture: Path | None,
                     show_log: bool, keep: bool) -> Result:
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
        make_harness_disk(hd, files, {"TOKEN": token, "CAPTURE": "1" if capture else "0",
                                      "CONTROL": "1" if control else "0"})
        return disks + [hd]

    tb = boot_fresh("test", rundir, base / "vmlinuz", initrd,
                    f"root={s.root} ro {s.append}".strip(), setup_test, s.timeout_test,
                    nbd_of(s, test=True, control=control))
    stat(f"{label}: test boot", tb.wall)
    if capture and tb.powered_off:
        tmpcap = rundir / "fixture"
        if debugfs_dump(hd, "/out/fixture", tmpcap, rdump=True):
            capture.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmpcap / "fixture", capture, dirs_exist_ok=True)
            say(f"fixture copied to {capture}")

    cb = None
    # A control boots the same check boot as the package run: it runs the same checks.
    if s.check_boot:
        hc = rundir / "harness-check.img"

        def setup_check() -> list[Path]:
            # On top of the test boot's disks, so a repeated check boot finds them as the
            # test boot left them.
            upper = [overlay(d, d.with_name(f"check-{d.name}")) for d in disks]
            make_harness_disk(hc, {"run.sh": guest_text(s.check_extra or "check.sh"),
                                   "check.sh": guest_text("check.sh")}, {})
            return upper + [hc]

        cb = boot_fresh("check", rundir, base / "vmlinuz", initrd,
                        f"root={s.root} ro init=/usr/local/sbin/exitrd-harness", setup_check,
                        TIMEOUT_CHECK, nbd_of(s))
        stat(f"{label}: check boot", cb.wall)

    try:
        res = evaluate(s, control, label, rundir, tb, cb, token)
    except Exception as e:  # a harness bug fails this scenario, not the whole suite
        res = Result(label, False, [], rundir, tb, cb,
                     error=f"evaluating the logs failed: {type(e).__name__}: {e}")
    report(res, show_log)
    if not keep:
        for d in disks:
            d.with_name(f"check-{d.name}").unlink(missing_ok=True)
            d.unlink(missing_ok=True)
    return res


def evaluate(s: Scenario, control: bool, label: str, rundir: Path, tb: Boot, cb: Boot,
             token: str) -> Result:
    if control:
        checks = checks_control(s, tb, cb, token)
    else:
        checks = checks_test_boot(s, tb) + (checks_check_boot(s, cb, token) if cb else [])
    return Result(label, all(c.ok or c.info for c in checks), checks, rundir, tb, cb)


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
    out = [f"\n== {r.label}: {'PASS' if r.passed else 'FAIL'}"
           + (f" (REPEATED: {'; '.join(r.repeats)})" if r.repeats else "")]
    if r.error:
        out.append(f"   error: {r.error}")
    for c in r.checks:
        if c.info:
            out.append(f"   (info: {'passes' if c.ok else 'fails'} here too) {c.name}")
        else:
            out.append(f"   [{'ok' if c.ok else 'FAIL'}] {c.name}"
                       + ("" if c.ok else f": {c.detail}"))
    for b in (r.test, r.check):
        if b is None:
            continue
        secs = shutdown_seconds(b.text)
        fig = f"; shutdown {secs:.2f} s (sync -> power down)" if secs is not None else ""
        wall = f"wall {b.wall:.0f} s" if b.wall else "wall n/a"
        out.append(f"   {b.name} boot: {wall}{fig}; log {b.log_path}")
        notes = sorted({m for ts, m in stamped(b.text) if ts is not None and "exitrd: could not" in m})
        out += [f"   note: {n}" for n in notes]
        # A guest script's figures ("harness: figure ...").
        out += [f"   {l}" for l in harness_lines(b.text) if l.startswith("figure ")]
        if show_log:
            out.append(indent(b.text))
    with PRINT_LOCK:
        print("\n".join(out) + "\n", flush=True)


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


# Cold, a stack's first scenario builds its stages (debootstrap, installer boot, package
# boot): minutes, most for bookworm. The suite starts those first, longest first, so the
# slow chains overlap, and every other run after them (estimates of a cold build, s).
COLD_COST = {"lvm-luks-md@bookworm": 1500, "lvm-cache-thin@trixie": 700,
             "nbd-root@trixie": 650, "lvm-luks-md@trixie": 450, "live@trixie": 300}


def suite_order(chosen: list[Scenario]) -> list[tuple[Scenario, bool]]:
    jobs = [(s, c) for s in chosen for c in ((False, True) if s.control else (False,))]
    first: dict[tuple[str, str], tuple[Scenario, bool]] = {}
    for s, c in jobs:
        first.setdefault((stack_name(s), s.release), (s, c))
    leaders = sorted(first.values(), key=lambda j: -COLD_COST.get(j[0].ident, 0))
    return leaders + [j for j in jobs if j not in leaders]


def cmd_suite(a) -> int:
    global PARALLEL
    t0 = time.monotonic()
    if a.names:
        chosen = [pick(n, a.release) for n in a.names]
    elif a.release:
        chosen = list({pick(s.name, a.release): None for s in SCENARIOS.values()
                       if s.in_suite})
    else:
        chosen = [s for s in SCENARIOS.values() if s.in_suite]
    jobs = suite_order(chosen)
    if any(not s.live for s, _ in jobs):
        find_deb()   # once, before the threads need it
    # One thread more than there are VM slots: a thread waiting for a stage that another
    # one builds (a cache lock) holds no slot, so the slots stay busy.
    threads = max(1, min(len(jobs), VM_SLOTS + 1))
    PARALLEL = VM_SLOTS > 1
    say(f"suite: {len(jobs)} runs, {threads} at a time in {VM_SLOTS} VM slots, "
        f"{vm_cpus()} vCPU per guest")
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {j: pool.submit(run_scenario, j[0], j[1], keep=a.keep) for j in jobs}
        by_job = {j: f.result() for j, f in futures.items()}
    # Declaration order in the summary, whatever order they ran in.
    results = [by_job[(s, c)] for s in chosen for c in ((False, True) if s.control else (False,))]
    print("\nsuite results (each run's wall time includes the stages it built):")
    for r in results:
        extra = f" ({r.error.splitlines()[0]})" if r.error else ""
        rep_ = f"  REPEATED: {'; '.join(r.repeats)}" if r.repeats else ""
        print(f"  {'PASS' if r.passed else 'FAIL'}  {r.wall:6.0f} s  {r.label}{extra}{rep_}")
    print_stats(time.monotonic() - t0)
    npass = sum(r.passed for r in results)
    nrep = sum(bool(r.repeats) for r in results)
    print(f"{npass} passed, {len(results) - npass} failed"
          + (f"; {nrep} passed only on a repeated boot (emulator fault)" if nrep else ""))
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
