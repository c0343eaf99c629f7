"""VM test harness for exitrd: real shutdowns of real storage stacks under qemu (TCG).

    python3 -m tests.vm run lvm-luks-md [--control] [--release trixie] [--show-log]
    python3 -m tests.vm suite
    python3 -m tests.vm demo

(from the repository root). Stages (each cached under $EXITRD_VM_CACHE, default
/var/tmp/exitrd-vm, keyed by a hash of its inputs and rebuilt when missing):
  rootfs  debootstrap of a release plus the harness service        (per release)
  base    installer VM builds the scenario's stack on blank disks   (per scenario)
  pkg     the stack booted once to install exitrd.deb               (per scenario + .deb)
Every test then boots throw-away qcow2 overlays: a test boot (marker, normal
poweroff) and a check boot (marker read back, md state). See tests/vm/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from . import snapshot, stages
from .logs import shutdown_excerpt, shutdown_seconds
from .qemu import Boot
from .runner import (boot_group, evaluate, prepare, print_stats, report, run_scenario,
                     suite)
from .scenarios import POWER_DOWN, SCENARIOS, SYNC_LINE, pick


def cmd_run(a) -> int:
    t0 = time.monotonic()
    s = pick(a.scenario, a.release)
    cap = Path(a.capture).resolve() if a.capture else None
    if snapshot.ENABLED:
        snapshot.SHARED.add(boot_group(s, a.control))
    r = run_scenario(s, a.control, cap, a.show_log, a.keep)
    print_stats(time.monotonic() - t0)
    return 0 if r.passed else 1


def chosen_of(a) -> list:
    if a.names:
        chosen = [pick(n, a.release) for n in a.names]
    elif a.release:
        chosen = list({pick(s.name, a.release): None for s in SCENARIOS.values()
                       if s.in_suite})
    else:
        chosen = [s for s in SCENARIOS.values() if s.in_suite]
    return chosen


def cmd_suite(a) -> int:
    return suite(chosen_of(a), a.keep)


def cmd_prepare(a) -> int:
    return prepare(chosen_of(a))


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


def cmd_recheck(a) -> int:
    """Evaluate the assertions again on the logs of an earlier run (no VM)."""
    rundir = Path(a.rundir).resolve()
    meta = json.loads((rundir / "run.json").read_text())
    s = pick(meta["scenario"], meta["release"])
    boots = [Boot(n, rundir / f"{n}.serial.log", 0.0, False, 0, 0)
             if (rundir / f"{n}.serial.log").exists() else None for n in ("test", "check")]
    if boots[0] is not None and (rundir / "ram.json").exists():
        boots[0].ram = json.loads((rundir / "ram.json").read_text())
    label = f"{s.ident}{' (control)' if meta['control'] else ''}"
    r = evaluate(s, meta["control"], label, rundir, boots[0], boots[1], meta["token"])
    report(r, a.show_log)
    return 0 if r.passed else 1


def cmd_rootfs(a) -> int:
    """Print the path of a release's rootfs stage (built when missing; progress on stderr)."""
    with contextlib.redirect_stdout(sys.stderr):
        r = stages.rootfs(a.release)
    print(r)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.vm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p = sub.add_parser("prepare", help="build the stages (rootfs, stacks, package boots) the "
                       "suite (or the scenarios named) needs, several at a time; no test boot")
    p.add_argument("names", nargs="*", help="only these scenarios")
    p.add_argument("--release", default=None, help="for this release instead")
    p = sub.add_parser("demo", help="run lvm-luks-md and show its shutdown")
    p.add_argument("--release", default=None)
    sub.add_parser("list", help="list scenarios")
    p = sub.add_parser("recheck", help="evaluate the assertions again on a run folder's logs")
    p.add_argument("rundir")
    p.add_argument("--show-log", action="store_true")
    p = sub.add_parser("rootfs", help="print the path of a release's rootfs stage (built "
                       "when missing)")
    p.add_argument("release")
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for s in SCENARIOS.values():
            print(s.ident)
        return 0
    if a.cmd == "recheck":
        return cmd_recheck(a)
    if a.cmd == "rootfs":
        return cmd_rootfs(a)
    if os.geteuid() != 0:
        raise SystemExit("needs root (debootstrap, chroot)")
    return {"run": cmd_run, "suite": cmd_suite, "prepare": cmd_prepare,
            "demo": cmd_demo}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
