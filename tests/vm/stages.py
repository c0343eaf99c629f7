"""The cached stages a test boots from. Each is a folder $EXITRD_VM_CACHE/<stage>-<name>-<key>
(default /var/tmp/exitrd-vm), the key a hash of its inputs, rebuilt when missing:
  rootfs  debootstrap of a release plus the harness service        (per release)
  base    installer VM builds the scenario's stack on blank disks   (per scenario)
  pkg     the stack booted once to install exitrd.deb               (per scenario + .deb)
  dracut  the base stack with dracut instead of initramfs-tools
          (scenarios with builder="dracut" and the benchmarks)
A live scenario's base and pkg stages are its boot medium, built on the host."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .checks import require_harness_ok
from .common import CACHE, REPO, guest_text, indent, key_of, run, say, sha256_file, stat, tail
from .qemu import (BootSpec, Http, Iscsi, Nbd, Nfs, boot_fresh, debugfs_dump, make_harness_disk,
                   overlay, stack_spec)
from .scenarios import TIMEOUT_INSTALL, Scenario

MIRROR = os.environ.get("EXITRD_VM_MIRROR", "http://deb.debian.org/debian")

# Bump when the host-side rootfs customisation below changes meaning.
ROOTFS_RECIPE = 2
# Every stage descends from a rootfs, whose key carries the month: a warm machine
# debootstraps again (and so rebuilds every stage) once a month instead of testing a
# frozen Debian forever. EXITRD_VM_EPOCH pins it (e.g. to rerun an old run's inputs).
EPOCH = os.environ.get("EXITRD_VM_EPOCH") or time.strftime("%Y-%m", time.gmtime())

BASE_PACKAGES = [
    "linux-image-amd64", "systemd-sysv", "udev", "initramfs-tools", "kmod", "zstd",
    "e2fsprogs", "mdadm", "cryptsetup", "cryptsetup-initramfs", "lvm2",
]

# Units that only slow a test boot down. Under emulation every process that links
# systemd's shared library costs a second or more of CPU: `systemd-analyze blame` of a
# trixie boot put getty-static at 10 s, each modprobe@ unit at 6-7 s, and ldconfig and
# the journal catalog (run on every boot of a fresh overlay) at 2-3 s. Nothing here
# touches storage or the shutdown: udev, lvm2-monitor, blk-availability (blkdeactivate),
# systemd-cryptsetup and the API file systems all stay.
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "mdcheck_start.timer",
    "mdcheck_continue.timer", "mdmonitor-oneshot.timer", "dpkg-db-backup.timer",
    "serial-getty@ttyS0.service", "getty@tty1.service", "systemd-timesyncd.service",
    "getty-static.service", "modprobe@drm.service", "modprobe@fuse.service",
    "ldconfig.service", "systemd-journal-catalog-update.service",
    "systemd-user-sessions.service",
]
# Generators of no use in the VMs, for the same reason (each is a process linking
# systemd's library). systemd-debug-generator stays (systemd.mask= on the command line),
# so do the fstab and cryptsetup generators (the root stack's units).
MASKED_GENERATORS = [
    "systemd-gpt-auto-generator", "systemd-ssh-generator", "systemd-tpm2-generator",
    "systemd-rc-local-generator", "systemd-run-generator", "systemd-system-update-generator",
    "systemd-getty-generator", "systemd-hibernate-resume-generator",
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

# The stage boots (installer, package, dracut) run the harness as PID 1, like the check
# boots: under emulation a full systemd boot cost 55 s (stack) to 114 s (the rootfs image
# with debootstrap's generic initrd) before run.sh started, and what the stage scripts
# need from it (udevd, a writable root, the hostname) lib.sh's stage_system starts.
STAGE_INIT = "init=/usr/local/sbin/exitrd-harness"

# --------------------------------------------------------------------------- the cache

FAILED: dict[str, str] = {}


# Stages unused this long are deleted by prune(): keys change with every month (EPOCH),
# package and script, so a warm machine would otherwise pile up old stages for good.
PRUNE_AFTER_DAYS = 35


def prune(now: float | None = None) -> list[Path]:
    """Deletes the stage folders whose last use (the mtime of their .complete, touched on
    every cache hit) is older than PRUNE_AFTER_DAYS. Returns what it deleted."""
    now = time.time() if now is None else now
    gone = []
    if not CACHE.is_dir():
        return gone
    for d in sorted(CACHE.iterdir()):
        done = d / ".complete"
        try:
            if d.is_dir() and done.exists() and now - done.stat().st_mtime > PRUNE_AFTER_DAYS * 86400:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d)
        except OSError:
            continue
    # Run folders (serial logs) of the same age go too.
    runs = CACHE / "runs"
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        try:
            if d.is_dir() and now - d.stat().st_mtime > PRUNE_AFTER_DAYS * 86400:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d)
        except OSError:
            continue
    for d in gone:
        say(f"pruned {d.name}: unused for over {PRUNE_AFTER_DAYS} days")
    return gone


def cached(kind: str, key: str, build) -> Path:
    """Return CACHE/<kind>-<key>, building it with build(tmpdir) when missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"{kind}-{key}"
    with open(CACHE / f".{kind}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            say(f"cache hit: {final}")
            os.utime(final / ".complete")   # last use, for prune()
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


# --------------------------------------------------------------------------- stages

@functools.cache
def rootfs(release: str, extra: tuple[str, ...] = ()) -> Path:
    """A release's debootstrap with the harness; with `extra`, that plus those packages
    (installed in a chroot copy: a second debootstrap would cost twice the time)."""
    if extra:
        return rootfs_plus(rootfs(release), release, tuple(sorted(set(extra))), native=False)
    packages = sorted(BASE_PACKAGES)
    key = key_of("rootfs", ROOTFS_RECIPE, EPOCH, release, MIRROR, packages, guest_text("harness.sh"),
                 HARNESS_UNIT, MASKED_UNITS, MASKED_GENERATORS)

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
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for g in MASKED_GENERATORS:
        (generators / g).unlink(missing_ok=True)
        (generators / g).symlink_to("/dev/null")
    # No stale apt lists or package cache in the image.
    run(["chroot", root, "apt-get", "clean"])


@functools.cache
def stack_base(s: Scenario) -> Path:
    if s.live:
        return live_medium(s, None)
    if s.nfs_root:
        return nfs_tree(s, None)
    rf = rootfs_native(s.release, s.extra_packages, s.native_packages)
    key = key_of("base", rf.name, s.installer, guest_text(s.installer), guest_text("lib.sh"),
                 s.disks, s.busybox_in_initramfs, s.initramfs_conf, STAGE_INIT)

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

        b = boot_fresh(BootSpec("install", tmp, rf / "vmlinuz", rf / "initrd.img",
                                f"root=/dev/vda rw {STAGE_INIT}", TIMEOUT_INSTALL), setup)
        require_harness_ok(b, f"{s.ident}: installer")
        if not debugfs_dump(hd, "/out/initrd-plain.img", tmp / "initrd-plain.img"):
            raise SystemExit(f"{s.ident}: installer left no initrd-plain.img")
        list_initrd(rf, tmp / "initrd-plain.img")
        shutil.copyfile(rf / "vmlinuz", tmp / "vmlinuz")
        shutil.rmtree(work)
        stat(f"{s.ident}: stage base (installer boot)", b.wall)

    return cached(f"base-{stack_name(s)}-{s.release}", key, build)


def chroot_install(s: Scenario, rf: Path, tmp: Path, deb: Path | None, deb_var: str,
                   what: str) -> Path:
    """The scenario's installer script run on the host in a chroot of a copy of the cached
    rootfs `rf` (tmp/root; own PID and mount namespaces, only /proc mounted, the host's
    resolv.conf for apt), with the package under test named by $`deb_var` when `deb` is
    given. Leaves the tree's kernel and initramfs in tmp (vmlinuz, initrd-exitrd.img or
    initrd-plain.img); returns the tree."""
    root = tmp / "root"
    run(["cp", "-a", "--reflink=auto", rf / "rootfs", root])
    (root / "tmp/install.sh").write_text(guest_text(s.installer))
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
           f"INITRAMFS_CONF={' '.join(s.initramfs_conf)}"]
    if deb:
        shutil.copyfile(deb, root / "tmp/exitrd.deb")
        env.append(f"{deb_var}=/tmp/exitrd.deb")
    log = tmp / "install.log"
    say(f"{s.ident}: {what}: chroot on the host (log {log})")
    with open(log, "w") as f:
        r = subprocess.run(["unshare", "--pid", "--fork", f"--mount-proc={root}/proc",
                            "chroot", root, *env, "sh", "/tmp/install.sh"],
                           stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"{s.installer} failed, see {log}:\n{indent(tail(log.read_text()))}")
    shutil.copyfile(rf / "rootfs/etc/resolv.conf", root / "etc/resolv.conf")
    for f in ("tmp/install.sh", "tmp/exitrd.deb"):
        (root / f).unlink(missing_ok=True)
    boot = root / "boot"
    shutil.copyfile(next(boot.glob("vmlinuz-*")), tmp / "vmlinuz")
    shutil.copyfile(next(boot.glob("initrd.img-*")),
                    tmp / f"initrd-{'exitrd' if deb else 'plain'}.img")
    return root


# Bump when what live_medium() leaves in its stage changes meaning (2: the squashfs kept
# beside the medium's disk, for live_fetch).
LIVE_RECIPE = 2


@functools.cache
def live_medium(s: Scenario, deb: Path | None) -> Path:
    """A live system's boot medium, built on the host as live-build does: the scenario's
    installer script runs in a chroot of a copy of the cached rootfs (own PID and mount
    namespaces, only /proc mounted) and installs live-boot, and the package when `deb` is
    given; the tree is squashed into live/filesystem.squashfs on an ext4 disk
    (disk0.qcow2), the chroot's kernel and initrd beside it, and the squashfs kept as
    medium/live/filesystem.squashfs too (what a live_fetch scenario serves over HTTP). The
    base stage (no package, initrd-plain.img) and the pkg stage (initrd-exitrd.img) of a
    live scenario."""
    rf = rootfs(s.release, s.extra_packages)
    deb_sha = sha256_file(deb) if deb else None
    key = key_of("live", LIVE_RECIPE, rf.name, MIRROR, s.installer, guest_text(s.installer),
                 s.initramfs_conf, deb_sha)
    stage = "pkg" if deb else "base"

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        root = chroot_install(s, rf, tmp, deb, "LIVE_DEB", f"live medium ({stage})")
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
        shutil.rmtree(root)
        msg = (f"chroot {t1 - t0:.0f} s, mksquashfs {t2 - t1:.0f} s, "
               f"squashfs {size_m - 64} MiB")
        (tmp / "build-info").write_text(msg + "\n")
        stat(f"{s.ident}: stage {stage} (live medium on the host: {msg})",
                      time.monotonic() - t0)

    return cached(f"{stage}-{stack_name(s)}-{s.release}", key, build)


@functools.cache
def nfs_tree(s: Scenario, deb: Path | None) -> Path:
    """A diskless machine's root file system, served over NFS (Scenario.nfs_root): a copy
    of the cached rootfs prepared in a chroot on the host by the scenario's installer
    script (with the package when `deb` is given: dpkg -i, whose trigger rebuilds the
    initramfs with the payload). The stage holds the tree (root/), the kernel and the
    initramfs (initrd-plain.img or initrd-exitrd.img); every test boot serves a copy."""
    rf = rootfs(s.release, s.extra_packages)
    deb_sha = sha256_file(deb) if deb else None
    key = key_of("nfs", rf.name, MIRROR, s.installer, guest_text(s.installer),
                 s.initramfs_conf, deb_sha)
    stage = "pkg" if deb else "base"

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        chroot_install(s, rf, tmp, deb, "EXITRD_DEB", f"NFS root ({stage})")
        stat(f"{s.ident}: stage {stage} (NFS root on the host)", time.monotonic() - t0)

    return cached(f"{stage}-{stack_name(s)}-{s.release}", key, build)


def nfs_of(s: Scenario, export: Path, test: bool = False,
           control: bool = False) -> Nfs | None:
    """How a boot of an NFS-root stack gets its root: the run's copy of the tree."""
    if not s.nfs_root:
        return None
    if not test:
        return Nfs(export)
    return Nfs(export, stop_on=s.nfs_stop_on_control if control else s.nfs_stop_on)


def http_of(s: Scenario, src: Path) -> Http | None:
    """How a boot of a live_fetch scenario gets its squashfs: from the medium stage `src`'s
    copy (live_medium), over HTTP."""
    if not s.live_fetch:
        return None
    return Http(src / "medium")


def nbd_of(s: Scenario, test: bool = False, control: bool = False) -> Nbd | None:
    """How a boot of the stack (not its installer) gets disk0 when it is a network root."""
    if not s.nbd_root:
        return None
    if not test:
        return Nbd()
    return Nbd(stop_on=s.nbd_stop_on_control if control else s.nbd_stop_on)


def iscsi_of(s: Scenario, test: bool = False, control: bool = False) -> Iscsi | None:
    """How a boot of the stack (not its installer) gets disk0 when it is an iSCSI root."""
    if not s.iscsi_root:
        return None
    if not test:
        return Iscsi()
    return Iscsi(stop_on=s.iscsi_stop_on_control if control else s.iscsi_stop_on)


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


def stack_plain(s: Scenario) -> tuple[Path, Path]:
    """The stack as stock Debian has it, without exitrd: its folder (disks, vmlinuz) and
    the initramfs it boots. With builder="dracut", the stack converted to dracut."""
    if s.builder == "dracut":
        d = stack_dracut(s)
        return d, d / "initrd-dracut.img"
    base = stack_base(s)
    return base, base / "initrd-plain.img"


def stack_pkg(s: Scenario, deb: Path) -> Path:
    if s.live:
        return live_medium(s, deb)
    if s.nfs_root:
        return nfs_tree(s, deb)
    base, plain_initrd = stack_plain(s)
    deb_sha = sha256_file(deb)
    key = key_of("pkg", base.name, deb_sha, guest_text("install-package.sh"), guest_text("lib.sh"),
                 STAGE_INIT)

    def build(tmp: Path) -> None:
        hd = tmp / "harness.img"

        def setup() -> list[Path]:
            disks = [overlay(d, tmp / d.name) for d in base_disks(base)]
            make_harness_disk(hd, {"run.sh": guest_text("install-package.sh"), "exitrd.deb": deb},
                              {"OUT_INITRD": "initrd-exitrd.img"})
            return disks + [hd]

        b = boot_fresh(stack_spec(s, "install-package", tmp, base / "vmlinuz",
                                  plain_initrd, STAGE_INIT, TIMEOUT_INSTALL,
                                  nbd=nbd_of(s), iscsi=iscsi_of(s)), setup)
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

    return cached(f"pkg-{stack_name(s)}{'-dracut' if s.builder == 'dracut' else ''}-{s.release}",
                  key, build)


# Debian's dracut in place of initramfs-tools, with its shutdown module: the stock
# side of the scenarios with builder="dracut" and of the benchmarks (tests/bench). The guests have no network: the .debs are fetched on the host in a chroot copy of
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
    key = key_of("dracut", base.name, rf.name, MIRROR, DRACUT_PACKAGES, "vmlinuz",
                 guest_text("install-dracut.sh"), guest_text("lib.sh"), STAGE_INIT)

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

        b = boot_fresh(stack_spec(s, "install-dracut", tmp, base / "vmlinuz",
                                  base / "initrd-plain.img", STAGE_INIT, TIMEOUT_INSTALL), setup)
        require_harness_ok(b, f"{s.ident}: dracut install")
        if not debugfs_dump(hd, "/out/initrd-dracut.img", tmp / "initrd-dracut.img"):
            raise SystemExit(f"{s.ident}: dracut stage left no initrd-dracut.img")
        hd.unlink()
        shutil.rmtree(debdir)
        shutil.copyfile(base / "vmlinuz", tmp / "vmlinuz")
        stat(f"{s.ident}: stage dracut (dracut install boot)", b.wall)

    return cached(f"dracut-{stack_name(s)}-{s.release}", key, build)
