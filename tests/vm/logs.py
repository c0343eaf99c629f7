"""Reading serial logs: kernel timestamps, the harness's own lines, exitrd's inventory
line, shutdown times, and whole-line matching of expectations."""

from __future__ import annotations

import re

from .scenarios import POWER_DOWN, SYNC_LINE, Rx

# CSI sequences (colours, cursor queries, "ESC [ ! p"), OSC sequences, carriage returns.
ANSI = re.compile(r"\x1b\[[0-9;?!]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\r")
STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def clean_log(text: str) -> str:
    return ANSI.sub("", text)


# A kernel line printed into the middle of a console line (exitrd writes its console
# copy itself; when the kernel's console output cuts in, the rest of that copy may be
# dropped: exitrd's console writes are bounded, never blocking).
EMBEDDED_STAMP = re.compile(r"(?<=\S)(?=\[\s*\d+\.\d+\] )")


def split_lines(text: str) -> list[tuple[str, bool]]:
    """The log's lines, a line with a kernel line printed into it split in two: (line,
    True) for the cut-off console fragment before it, (line, False) otherwise."""
    out = []
    for line in text.splitlines():
        parts = EMBEDDED_STAMP.split(line)
        out += [(p, i < len(parts) - 1) for i, p in enumerate(parts)]
    return out


def stamped(text: str) -> list[tuple[float | None, str]]:
    out = []
    for line, _ in split_lines(text):
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


def exitrd_console_and_kernel_lines(text: str) -> tuple[list[str], list[str]]:
    """The shutdown runtime's lines as written to the console (no timestamp) and as the
    kernel printed them from /dev/kmsg (timestamped), each from its 'running as PID 1'
    line on: what came earlier is the boot's, written to the console only."""
    start = re.compile(r"exitrd: exitrd \S+ running as PID 1: .*")
    console: list[str] = []
    kernel: list[str] = []
    for line, fragment in split_lines(text):
        if fragment:
            continue   # a console copy cut short: not a whole line exitrd wrote
        m = STAMP.match(line)
        ts, msg = (float(m.group(1)), m.group(2)) if m else (None, line)
        into = console if ts is None else kernel
        if into or start.fullmatch(msg):
            if msg.startswith("exitrd: "):
                into.append(msg)
    return console, kernel


def find_line(msgs: list[str], p: str, start: int = 0) -> int | None:
    rx = line_pattern(p)
    return next((i for i in range(start, len(msgs)) if rx.fullmatch(msgs[i])), None)


def has_line(msgs: list[str], p: str) -> bool:
    return find_line(msgs, p) is not None
