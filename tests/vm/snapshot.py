"""Booted snapshots (on unless EXITRD_VM_SNAPSHOTS=0): a test boot starts from the saved
state of a guest that already booted the same disks, kernel, initramfs and command line,
instead of booting again. Under emulation the boot up to the harness costs 60-100 s of a
test boot's 90-200 s; runs on the same stack and media (most controls of a stack, and the
package runs without a command line of their own) share one.

The snapshot's guest boots with two extra disks: a HARNESS disk whose run.sh
(guest/snapshot-wait.sh) logs qemu.SNAPSHOT_POINT and waits, and a blank slot. The host
then saves the guest's state (qemu.save_state) with the disks' state in qcow2 overlays.
A run restores it (qemu -incoming) on overlays of those, with its own HARNESS disk in the
slot; the waiting script finds it there, mounts it and runs its run.sh. The serial log of
the run is the snapshot's boot followed by the run's own part, so that the checks see one
boot. On a UEFI stack the snapshot's HARNESS disk carries GRUB's arguments (qemu.grub_args)
and a restored run needs none. RAM-search runs restore too: their RAM is that of one
guest's life, the snapshot's boot included (the volume key was set at its unlock). Not
for network-root runs (the NBD server and the guest's connection to it belong to one qemu
process) nor live ones, from a medium or fetched over HTTP (two runs, two media: nothing
to share)."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
from pathlib import Path

from . import qemu
from .common import guest_text, key_of, say
from .qemu import Boot, BootSpec, boot, make_harness_disk, overlay
from .stages import cached

ENABLED = os.environ.get("EXITRD_VM_SNAPSHOTS", "1") != "0"
# The boot groups (runner.boot_group) of more than one run in this suite: only those get
# a snapshot (one run alone would pay for the snapshot and gain nothing). `run` of one
# scenario adds its group too, so that a run by hand boots as it does in the suite.
SHARED: set = set()
# The slot takes the run's HARNESS disk: make_harness_disk's default size.
SLOT_SIZE = "300M"
SERIAL = "snapshot.serial.log"


def eligible(s) -> bool:
    return ENABLED and not (s.nbd_root or s.live or s.live_fetch or s.nfs_root or s.iscsi_root)


@functools.lru_cache(maxsize=1)
def qemu_version() -> str:
    r = subprocess.run([qemu.QEMU, "--version"], capture_output=True, text=True, check=False)
    return r.stdout.splitlines()[0] if r.stdout else "unknown"


def booted(spec: BootSpec, src_disks: list[Path]) -> Path:
    """The snapshot of booting `src_disks` as `spec` says (built once, cached by what
    makes the guest's state: disks, kernel, initramfs, command line, devices, vCPUs)."""
    key = key_of("booted", "saved stopped", [str(d) for d in src_disks], str(spec.kernel), str(spec.initrd),
                 spec.append, list(spec.extra_args), qemu.QEMU_BASE, qemu.vm_cpus(),
                 str(qemu.OVMF) if spec.uefi else "",
                 qemu_version(), guest_text("snapshot-wait.sh"), guest_text("lib.sh"))

    def build(tmp: Path) -> None:
        disks = [overlay(d, tmp / d.name) for d in src_disks]
        # Only the waiting disk is named harness*: on a UEFI stack it takes grub.cfg.
        wait, slot = tmp / "harness-wait.img", tmp / "slot.img"
        # virtio disks get their names in the order of the command line.
        run_dev = "/dev/vd" + chr(ord("a") + len(disks) + 1)
        make_harness_disk(wait, {"run.sh": guest_text("snapshot-wait.sh")},
                          {"RUN_DEV": run_dev})
        subprocess.run(["truncate", "-s", SLOT_SIZE, str(slot)], check=True)
        state = tmp / "state"
        b = boot(dataclasses.replace(spec, name="snapshot", rundir=tmp, snapshot_to=state,
                                     ram_dump=None), disks + [wait, slot])
        if not state.exists():
            raise SystemExit(f"the guest did not reach the snapshot point ({b.why_not_off()});"
                             f" see {b.log_path}")

    return cached("booted", key, build)


def restore_drives(snap: Path, rundir: Path, run_harness: Path) -> list[Path]:
    """The run's drives: overlays of the snapshot's disks and of its waiting HARNESS disk,
    and the run's own HARNESS disk in the slot."""
    disks = [overlay(d, rundir / d.name) for d in sorted(snap.glob("disk*.qcow2"))]
    wait = overlay(snap / "harness-wait.img", rundir / "harness-wait.qcow2", base_fmt="raw")
    return disks + [wait, run_harness]


def restored(spec: BootSpec, snap: Path) -> BootSpec:
    return dataclasses.replace(spec, incoming=snap / "state")


def join_log(b: Boot, snap: Path) -> None:
    """The run's serial log after the snapshot's boot: one log, as from one boot."""
    own = b.log_path.read_bytes()
    b.log_path.write_bytes((snap / SERIAL).read_bytes() + own)
    say(f"boot {b.name}: restored from {snap.name}")
