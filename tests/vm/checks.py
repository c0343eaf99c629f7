"""What a run asserts, as a list of named Checks: on the test boot with the package, on
the check boot after it, and on a control run (without the package), which must fail the
checks its scenario names in control_fails."""

from __future__ import annotations

import collections
import dataclasses
import re

from .common import indent, tail
from .logs import (exitrd_console_and_kernel_lines, find_line, harness_lines, has_line,
                   inventory, line_pattern, messages, shutdown_excerpt, shutdown_seconds,
                   stamped)
from .qemu import Boot
from .ram import key_total, planted
from .scenarios import GAVE_UP, SWITCH_LINES, UNABLE_FINALIZE, Rx, Scenario, pinned


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
    if s.ends_at_final_line:
        after = stamped_after(text, s.final_line)
        c.append(Check(f"VM ended by itself right after '{s.final_line}'",
                       ended and b.returncode == 0 and after == [],
                       b.why_not_off() if b.timed_out else
                       f"qemu exit code {b.returncode}; " + (
                           "no such line" if after is None else
                           f"kernel lines after it: {after[:5]}")))
    else:
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
    if s.inventory:
        c.append(Check("exitrd inventory line", inv is not None, "no 'exitrd: inventory:' line"))
        # Without the line every inventory check fails (a control has none): they exist
        # either way, so a control can name them.
        closed, by_kernel, left = inv if inv is not None else ([], [], "(no inventory line)")
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
    if s.pivot:
        # /dev/kmsg keeps only 10 lines per 5 s of each open file unless the command line
        # says printk.devkmsg=on, which the VMs do not: every line must get through anyway.
        console, kernel = exitrd_console_and_kernel_lines(text)
        lost = collections.Counter(console) - collections.Counter(kernel)
        name = "every exitrd console line reached the kernel log"
        if s.ends_at_final_line and console and line_pattern(s.final_line).fullmatch(console[-1]):
            # The kernel prints a /dev/kmsg record on the serial console after the fact
            # (its copy of each exitrd line shows up after the next one's console copy);
            # a PID 1 wedged for good prints nothing more, and the reset comes first. Seen
            # in both runs of fault-wedged: every line but that last one arrived.
            lost[console[-1]] -= 1
            lost = +lost
            name = ("every exitrd console line but the last (the kernel prints that one "
                    "lazily, and nothing follows a wedge) reached the kernel log")
        c.append(Check(name, bool(console) and not lost,
                       f"{sum(lost.values())} of {len(console)} console lines not in the "
                       f"kernel log, first: {next(iter(lost), None)!r}" if console
                       else "no exitrd run on the console"))
        # mlockall: the runtime keeps its pages in RAM (it says so when it cannot).
        c.append(Check("log lacks 'exitrd: could not lock exitrd in memory*'",
                       not has_line(msgs, "exitrd: could not lock exitrd in memory*"),
                       "present"))
    for l in s.kernel_lines:
        c.append(Check(f"kernel logged '{l}'", has_line(msgs, l), "absent"))
    if s.iscsi_logout is not None:
        # From the host's capture of the guest's traffic (qemu.iscsi_traffic), not from
        # what the guest says about itself.
        seen = b.iscsi.logout() if b.iscsi is not None else None
        what = b.iscsi.describe() if b.iscsi is not None else "no capture"
        if s.iscsi_logout:
            c.append(Check("host: the target got a Logout Request and answered it",
                           seen is not None, what))
        else:
            c.append(Check("host: the target got no answered Logout Request", seen is None,
                           seen or what))
    if s.pivot:
        gave_up = [m for m in msgs if GAVE_UP.fullmatch(m)]
        c.append(Check("systemd did not give up ('Unable/Failed to finalize')", not gave_up,
                       f"present: {gave_up}"))
    c += checks_ram(s, b)
    for l in s.expect:
        c.append(Check(f"log has '{l}'", has_line(msgs, l), "absent"))
    for l in s.forbid:
        c.append(Check(f"log lacks '{l}'", not has_line(msgs, l), "present"))
    if s.expect_one_path:
        taken = [i for i, p in enumerate(s.expect_one_path) if all(has_line(msgs, l) for l in p)]
        paths = " | ".join(" + ".join(f"'{l}'" for l in p) for p in s.expect_one_path)
        # The paths are listed most specific first: the first complete one is the one
        # the kernel took (a later one may share lines with it).
        c.append(Check(f"log shows one path of: {paths}", bool(taken), "none complete"))
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


def stamped_after(text: str, p: str) -> list[str] | None:
    """The kernel-timestamped lines after the first line matching `p`, other than copies of
    it and the kernel's copies of exitrd lines whose console copy came before it (an exitrd
    line comes twice, and the kernel's copy can lag: run 20261202-065202 printed the
    previous line's after the hang line's console copy). None without such a line.
    Whatever the kernel logs (a reboot, a panic, sysrq) carries a timestamp; the console
    copy does not, and may be cut by kernel lines, so unstamped text is not counted."""
    rx = line_pattern(p)
    lines = stamped(text)
    first = next((i for i, (_, msg) in enumerate(lines) if rx.fullmatch(msg)), None)
    if first is None:
        return None
    earlier = collections.Counter(msg for ts, msg in lines[:first]
                                  if ts is None and msg.startswith("exitrd: "))
    earlier -= collections.Counter(msg for ts, msg in lines[:first] if ts is not None)
    after = []
    for ts, msg in lines[first + 1:]:
        if ts is None or rx.fullmatch(msg):
            continue
        if earlier[msg] > 0:
            earlier[msg] -= 1
            continue
        after.append(msg)
    return after


# Of a pattern written into the guest, what may be left in its RAM after it stopped. Not
# zero: a record may sit in a page of the writer's that was not freed but reused.
PATTERN_LEFT_MAX = 1.0   # %


def checks_ram(s: Scenario, b: Boot) -> list[Check]:
    """The secrets the test boot planted (ram-secrets.sh), searched for in its RAM."""
    if not s.ram:
        return []
    keys, patterns = planted(b.text)
    r = b.ram
    c = [Check("guest RAM saved when it stopped", r is not None,
               "no dump (did qemu stop the guest?)")]
    r = r or {"keys": {}, "patterns": {}}
    if "key" in s.ram:
        found = {n: k for n, k in r["keys"].items()}
        counts = "; ".join(f"{n}: {k['whole']} whole, {k['first_half']} + {k['second_half']} "
                           f"halves ({k['bits']}-bit key)" for n, k in found.items())
        c.append(Check(f"LUKS volume keys gone from RAM ({counts or 'none planted'})",
                       bool(keys) and bool(found) and all(key_total(k) == 0
                                                          for k in found.values()),
                       f"planted: {sorted(keys)}; found: {counts}"))
    for kind in ("tmpfs", "page-cache"):
        if kind not in s.ram:
            continue
        p = r["patterns"].get(kind)
        left = p["percent_left"] if p else None
        c.append(Check(f"{kind} pattern erased from RAM (at most {PATTERN_LEFT_MAX:g} % left; "
                       f"{'%.3f %% left' % left if p else 'not planted'})",
                       kind in patterns and p is not None and left <= PATTERN_LEFT_MAX,
                       f"{p}"))
    if "fetched" in s.ram:
        # The squashfs a live system downloaded (Scenario.live_fetch), page by page as the
        # host served it (ram.file_pages_left).
        f = r.get("files", {}).get("fetched")
        left = f["percent_left"] if f else None
        c.append(Check(f"fetched squashfs erased from RAM (at most {PATTERN_LEFT_MAX:g} % of "
                       f"its pages left; " + (f"{left:.3f} % of {f['pages']} left)"
                                              if left is not None else "not searched)"),
                       left is not None and left <= PATTERN_LEFT_MAX, f"{f}"))
    return c


# How the check boot's checks (checks_check_boot) are named.
CHECK_BOOT_CHECKS = ("check boot powered off", "data intact: ", "check boot log has ")


def control_needs_check_boot(s: Scenario) -> bool:
    """A control's check boot proves something only when the scenario names one of its
    checks among those the control must fail, or expects lines of it (the data-intact
    checks pass after stock Debian's shutdown too: they were information only)."""
    return bool(s.control_check_expect) or any(
        n.startswith(CHECK_BOOT_CHECKS) for n in s.control_fails)


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
    rebooted = (s.verb == "reboot" and not b.timed_out
                and has_line(msgs, "reboot: Restarting system"))
    if s.control_hangs:
        c = [Check(f"VM hung: still up when stopped after {b.timeout} s", b.timed_out,
                   "it ended by itself")]
    else:
        c = [Check(f"VM {'rebooted' if s.verb == 'reboot' else 'powered off'} by itself",
                   b.powered_off or rebooted, b.why_not_off())]
    c.append(Check("test boot script exited 0", rc == "0", f"run.sh exit={rc}"))
    if s.control_hangs:
        pass
    elif s.control_switches:
        missing = [l for l in switch if not has_line(msgs, l)]
        c.append(Check("systemd switched into the stock shutdown initramfs", not missing,
                       f"missing: {missing}"))
    else:
        c += [Check("no switch into an exitrd", not any(has_line(msgs, l) for l in switch),
                    "switched"),
              Check(f"systemd gave up: '{unable}'", has_line(msgs, unable), "absent")]
    for l in s.control_expect:
        c.append(Check(f"control log has '{l}'", has_line(msgs, l), "absent"))
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
