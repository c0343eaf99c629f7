"""A test run: one scenario (with the package, or its control without it) booted on fresh
overlays of its stages, the logs evaluated into checks, the result reported; and the
suite, every scenario and its control run in parallel threads (one VM slot each)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import secrets
import shutil
import time
from pathlib import Path

from . import common, qemu, ram, snapshot
from .checks import (Check, checks_check_boot, checks_control, checks_test_boot,
                     control_needs_check_boot)
from .common import CACHE, guest_text, indent, run, say, stat
from .logs import harness_lines, shutdown_excerpt, shutdown_seconds, stamped
from .qemu import Boot, boot_fresh, debugfs_dump, make_harness_disk, overlay, stack_spec
from .scenarios import TIMEOUT_CHECK, Scenario
from .stages import (find_deb, http_of, iscsi_of, nbd_of, nfs_of, prune, stack_name, stack_pkg,
                     stack_plain)


# --------------------------------------------------------------------------- a test run

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


# Every test boot has a hardware watchdog, as servers do: armed only where a scenario
# says so (Scenario.watchdog) or by systemd's own default for a reboot (10 min); and runs
# that differ only in arming it boot alike (one booted snapshot).
WATCHDOG_DEVICE = ("-device", "i6300esb")


def boot_append(s: Scenario, control: bool) -> str:
    """The test boot's extra kernel arguments. A control boots without the exitrd.*
    switches: nothing reads them without the package, and controls that differ only in
    those then boot alike (and share a booted snapshot)."""
    if not control:
        return s.append
    return " ".join(a for a in s.append.split() if not a.startswith("exitrd."))


def boot_group(s: Scenario, control: bool) -> tuple:
    """What a test boot's guest state after booting depends on (short of the disks'
    stage keys, which follow from these): runs of a suite with the same group can start
    from one booted snapshot."""
    media = "base" if control or s.media == "base+deb" else s.media
    return (stack_name(s), s.builder, s.release, media, boot_append(s, control),
            s.qemu_extra, s.uefi)


def run_scenario(s: Scenario, control: bool, capture: Path | None = None,
                 show_log: bool = False, keep: bool = False) -> Result:
    label = f"{s.ident}{' (control)' if control else ''}"
    common.CONTEXT.label = label
    t0 = time.monotonic()
    try:
        r = run_scenario_now(s, control, label, capture, show_log, keep)
    except Exception as e:  # a harness bug fails this scenario, not the whole suite
        r = Result(label, False, [], CACHE / "runs", error=f"{type(e).__name__}: {e}")
        report(r)
    finally:
        common.CONTEXT.label = ""
    r.wall = time.monotonic() - t0
    return r


def run_scenario_now(s: Scenario, control: bool, label: str, capture: Path | None,
                     show_log: bool, keep: bool) -> Result:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rundir = CACHE / "runs" / f"{stamp}-{s.name}-{s.release}{'-control' if control else ''}"
    rundir.mkdir(parents=True, exist_ok=True)
    try:
        base, plain_initrd = stack_plain(s)
        if control or s.media == "base+deb":
            src, initrd = base, plain_initrd
        elif s.media == "pkg-plain":
            src, initrd = stack_pkg(s, find_deb()), plain_initrd
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
    if s.ram:
        files.update(ram.harness_files(guest_text(s.test_extra) if s.test_extra else None))
    elif s.test_extra:
        files["extra.sh"] = guest_text(s.test_extra)
    if s.media == "base+deb" and not control:
        files["exitrd.deb"] = find_deb()
    disks: list[Path] = []
    dump = rundir / "test.ram" if s.ram else None
    # An NFS root: every run serves a copy of the stage's tree (the test and check boots
    # share it), made when the test boot is set up and removed with the run's disks.
    export = rundir / "export"
    spec = stack_spec(s, "test", rundir, base / "vmlinuz", initrd, boot_append(s, control),
                      (s.control_timeout or s.timeout_test) if control else s.timeout_test,
                      nbd=nbd_of(s, test=True, control=control),
                      nfs=nfs_of(s, export, test=True, control=control),
                      iscsi=iscsi_of(s, test=True, control=control), http=http_of(s, src),
                      ram_dump=dump, extra_args=s.qemu_extra + WATCHDOG_DEVICE)
    # A live system fetched over HTTP boots without its medium's disk.
    src_disks = [] if s.live_fetch else sorted(src.glob("disk*.qcow2"))
    snap = None
    if snapshot.eligible(s) and boot_group(s, control) in snapshot.SHARED and not capture:
        try:
            snap = snapshot.booted(spec, src_disks)
        except SystemExit as e:
            r = Result(label, False, [], rundir, error=f"booted snapshot: {e}")
            report(r)
            return r

    def setup_test() -> list[Path]:
        make_harness_disk(hd, files, {"TOKEN": token, "CAPTURE": "1" if capture else "0",
                                      "CONTROL": "1" if control else "0", "VERB": s.verb,
                                      "WATCHDOG": s.watchdog or "", "FAULT": s.fault})
        if snap is not None:
            drives = snapshot.restore_drives(snap, rundir, hd)
            disks[:] = drives[:-2]
            return drives
        disks[:] = [overlay(d, rundir / d.name) for d in src_disks]
        if s.nfs_root:
            shutil.rmtree(export, ignore_errors=True)
            run(["cp", "-a", "--reflink=auto", src / "root", export])
        return disks + [hd]

    tb = boot_fresh(snapshot.restored(spec, snap) if snap else spec, setup_test)
    if snap is not None:
        snapshot.join_log(tb, snap)
    stat(f"{label}: test boot", tb.wall)
    if dump is not None and dump.exists():
        t0 = time.monotonic()
        # The squashfs a live_fetch guest downloaded, as the host served it.
        files = ({"fetched": spec.http.root / qemu.HTTP_FETCHED}
                 if spec.http is not None and "fetched" in s.ram else {})
        tb.ram = ram.scan_and_drop(dump, tb.text, files)
        stat(f"{label}: RAM search", time.monotonic() - t0)
    if capture and tb.powered_off:
        tmpcap = rundir / "fixture"
        if debugfs_dump(hd, "/out/fixture", tmpcap, rdump=True):
            capture.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmpcap / "fixture", capture, dirs_exist_ok=True)
            say(f"fixture copied to {capture}")

    cb = None
    # A control boots the same check boot as the package run where the check boot is part
    # of the proof (control_needs_check_boot); elsewhere it only repeated, at ~25-50 s a
    # boot, data-intact checks that stock Debian passes too.
    if s.check_boot and (not control or control_needs_check_boot(s)):
        hc = rundir / "harness-check.img"

        def setup_check() -> list[Path]:
            # On top of the test boot's disks, so a repeated check boot finds them as the
            # test boot left them.
            upper = [overlay(d, d.with_name(f"check-{d.name}")) for d in disks]
            make_harness_disk(hc, {"run.sh": guest_text(s.check_extra or "check.sh"),
                                   "check.sh": guest_text("check.sh")}, {})
            return upper + [hc]

        cb = boot_fresh(stack_spec(s, "check", rundir, base / "vmlinuz", initrd,
                                   "init=/usr/local/sbin/exitrd-harness", TIMEOUT_CHECK,
                                   nbd=nbd_of(s), nfs=nfs_of(s, export),
                                   iscsi=iscsi_of(s), http=http_of(s, src)), setup_check)
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
        (rundir / "harness-wait.qcow2").unlink(missing_ok=True)
        shutil.rmtree(export, ignore_errors=True)
    return res


def evaluate(s: Scenario, control: bool, label: str, rundir: Path, tb: Boot, cb: Boot,
             token: str) -> Result:
    if control:
        checks = checks_control(s, tb, cb, token)
    else:
        checks = checks_test_boot(s, tb) + (checks_check_boot(s, cb, token) if cb else [])
    return Result(label, all(c.ok or c.info for c in checks), checks, rundir, tb, cb)


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
    with common.PRINT_LOCK:
        print("\n".join(out) + "\n", flush=True)


def print_stats(total: float) -> None:
    print("timings:")
    for what, secs in common.STATS:
        print(f"  {secs:7.0f} s  {what}")
    print(f"  {total:7.0f} s  total wall time")


# --------------------------------------------------------------------------- the suite

# Cold, a stack's first scenario builds its stages (debootstrap, installer boot, package
# boot): minutes, most for bookworm. The suite starts those first, longest first, so the
# slow chains overlap, and every other run after them (estimates of a cold build, s).
COLD_COST = {"lvm-luks-md@bookworm": 1500, "encrypted-lvm@bookworm": 1400,
             "lvm-luks-md-dracut@trixie": 1000, "luks-root-dracut@trixie": 950,
             "encrypted-lvm@trixie": 900, "lvm-cache-thin@trixie": 700,
             "nbd-root@trixie": 650, "late-stack@trixie": 450, "live@trixie": 300}


# Runs whose boots took longest in CI's suite of 2026-12-02, on 2 cores (test + check
# boot, s; install-running's before it stopped rebuilding the initramfs).
LONG_RUNS = {"purge@trixie": 410, "fault-dm-suspended@trixie": 262,
             "lvm-cache-thin@trixie": 259, "luks-root-dracut@trixie": 252,
             "fault-dm-suspended@trixie (control)": 245, "fault-stalled-root@trixie": 233,
             "lvm-cache-thin@trixie (control)": 232, "nbd-server-gone@trixie (control)": 230,
             "lvm-luks-md-dracut@trixie": 229, "encrypted-lvm-reboot@trixie": 227,
             "install-running@trixie": 180}


def suite_order(chosen: list[Scenario]) -> list[tuple[Scenario, bool]]:
    jobs = [(s, c) for s in chosen for c in ((False, True) if s.control else (False,))]
    first: dict[tuple[str, str], tuple[Scenario, bool]] = {}
    for s, c in jobs:
        first.setdefault((stack_name(s), s.builder, s.release), (s, c))
    leaders = sorted(first.values(), key=lambda j: -COLD_COST.get(j[0].ident, 0))
    # The rest longest first, so that no long run is left alone in one slot at the end
    # (stable: declaration order otherwise).
    rest = sorted((j for j in jobs if j not in leaders),
                  key=lambda j: -LONG_RUNS.get(f"{j[0].ident}{' (control)' if j[1] else ''}", 0))
    return leaders + rest


def prepare(chosen: list[Scenario]) -> int:
    """Build every stage the chosen scenarios need, one thread per stack (the longest
    cold chains first), without test boots: `scripts/test` runs this in the background
    while the static checks and unit tests use the other core."""
    t0 = time.monotonic()
    prune()
    leaders = [s for s, _ in suite_order(chosen)]
    stacks = list({(stack_name(s), s.builder, s.release): s for s in leaders}.values())
    deb = find_deb() if any(not s.live for s in stacks) else None
    qemu.PARALLEL = qemu.VM_SLOTS > 1

    def build(priority: int, s: Scenario) -> str:
        common.CONTEXT.priority = priority
        common.CONTEXT.label = f"prepare {s.ident}"
        try:
            stack_plain(s)
            if deb is not None or s.live:
                stack_pkg(s, deb)
            return ""
        except (Exception, SystemExit) as e:
            return f"{s.ident}: {e}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(stacks))) as pool:
        errors = [e for e in pool.map(build, range(len(stacks)), stacks) if e]
    print_stats(time.monotonic() - t0)
    for e in errors:
        print(f"prepare: FAILED: {e}")
    return 1 if errors else 0


def suite(chosen: list[Scenario], keep: bool = False) -> int:
    """Run the chosen scenarios, each with its control, several at a time; print a summary."""
    t0 = time.monotonic()
    jobs = suite_order(chosen)
    if any(not s.live for s, _ in jobs):
        find_deb()   # once, before the threads need it
    if snapshot.ENABLED:
        groups = collections.Counter(boot_group(s, c) for s, c in jobs if snapshot.eligible(s))
        snapshot.SHARED.update(g for g, n in groups.items() if n > 1)
        say(f"suite: booted snapshots for {len(snapshot.SHARED)} groups of runs "
            f"({sum(groups[g] for g in snapshot.SHARED)} runs)")
    # A thread per run: one waiting for a stage that another builds (a cache lock) holds no
    # VM slot, and the slots go to the waiting boots in this order (qemu.vm_slot).
    qemu.PARALLEL = qemu.VM_SLOTS > 1
    say(f"suite: {len(jobs)} runs in {qemu.VM_SLOTS} VM slots, "
        f"{qemu.vm_cpus()} vCPU per guest")

    def job(priority: int, s: Scenario, control: bool) -> Result:
        common.CONTEXT.priority = priority
        return run_scenario(s, control, keep=keep)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {j: pool.submit(job, i, *j) for i, j in enumerate(jobs)}
        by_job = {j: f.result() for j, f in futures.items()}
    # Declaration order in the summary, whatever order they ran in.
    results = [by_job[(s, c)] for s in chosen for c in ((False, True) if s.control else (False,))]
    print("\nsuite results (boots: its own test and check boots; done at: since the suite's "
          "start, waits for stages and VM slots included):")
    for r in results:
        extra = f" ({r.error.splitlines()[0]})" if r.error else ""
        rep_ = f"  REPEATED: {'; '.join(r.repeats)}" if r.repeats else ""
        boots = sum(b.wall for b in (r.test, r.check) if b is not None)
        print(f"  {'PASS' if r.passed else 'FAIL'}  boots {boots:4.0f} s  done at "
              f"{r.wall:5.0f} s  {r.label}{extra}{rep_}")
    print_stats(time.monotonic() - t0)
    npass = sum(r.passed for r in results)
    nrep = sum(bool(r.repeats) for r in results)
    print_failures(results)
    print(f"{npass} passed, {len(results) - npass} failed"
          + (f"; {nrep} passed only on a repeated boot (emulator fault)" if nrep else ""))
    return 0 if npass == len(results) else 1


def print_failures(results: list[Result]) -> None:
    """What failed, again at the very end: a CI log shown only by its tail must still say
    which check failed and how, with the end of that boot's shutdown."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    print("failures (each run's full report is above, its logs in its run folder):")
    for r in failed:
        print(f"  {r.label}: run folder {r.rundir}")
        if r.error:
            print(f"    error: {r.error.splitlines()[0]}")
        for c in r.checks:
            if not c.ok and not c.info:
                print(f"    FAIL {c.name}: {c.detail.splitlines()[0][:300] if c.detail else ''}")
        if r.test is not None:
            print(indent("\n".join(shutdown_excerpt(r.test.text).splitlines()[-25:])))
