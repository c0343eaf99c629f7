"""The guest's RAM after it powered off or reset (Scenario.ram): what the guest planted
(guest/ram-secrets.sh: LUKS volume keys, patterns in a tmpfs and in the page cache), and
files the host handed it (a live system's fetched squashfs), are searched for in the dump
qemu saved, as an attacker with the machine would."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .common import guest_text
from .logs import harness_lines

KEY = re.compile(r"ram: volume key of (\S+): ([0-9a-f]+)")
PATTERN = re.compile(r"ram: pattern (\S+) (\S+) seed ([0-9a-f]{16}) records (\d+)")
RECORD = re.compile(rb"XRD:([0-9a-f]{16}):(\d{8});")


def harness_files(main: str | None = None) -> dict[str, str]:
    """HARNESS disk files for a test boot that plants the secrets (ram-secrets.sh) as its
    extra.sh, then runs the guest script text `main`, if any (a fault may end the boot, so
    the secrets go first)."""
    files = {"ram.sh": guest_text("ram-secrets.sh"),
             "extra.sh": 'set -e\nsh "${HARNESS_LIB%/*}/ram.sh"\n'}
    if main is not None:
        files["extra-main.sh"] = main
        files["extra.sh"] += 'sh "${HARNESS_LIB%/*}/extra-main.sh"\n'
    return files


def planted(text: str) -> tuple[dict[str, str], dict[str, tuple[str, str, int]]]:
    """From the test boot's log: volume keys by mapping, patterns by kind."""
    keys: dict[str, str] = {}
    patterns: dict[str, tuple[str, str, int]] = {}
    for l in harness_lines(text):
        if m := KEY.fullmatch(l):
            keys[m.group(1)] = m.group(2)
        elif m := PATTERN.fullmatch(l):
            patterns[m.group(1)] = (m.group(2), m.group(3), int(m.group(4)))
    return keys, patterns


PAGE = 4096


def page_digests(data: bytes | memoryview) -> list[bytes]:
    """A digest of each PAGE-sized piece of `data` from its start, the last one padded with
    zeros (as the page cache holds a file's tail)."""
    mv = memoryview(data)
    out = []
    for off in range(0, len(mv), PAGE):
        piece = mv[off:off + PAGE]
        if len(piece) < PAGE:
            piece = bytes(piece) + bytes(PAGE - len(piece))
        out.append(hashlib.blake2b(piece, digest_size=16).digest())
    return out


def file_pages_left(data: bytes, path: Path) -> dict:
    """How many of the file's distinct pages (zero pages left out) the dump holds whole at
    a page boundary: where the page cache (a ramfs, a tmpfs, a loop device's cache) keeps
    a file, each page of it holds exactly one page-aligned piece of the file."""
    zero = hashlib.blake2b(bytes(PAGE), digest_size=16).digest()
    wanted = set(page_digests(path.read_bytes())) - {zero}
    left = wanted.intersection(page_digests(data))
    return {"path": str(path), "pages": len(wanted), "left": len(left),
            "percent_left": round(100.0 * len(left) / len(wanted), 3) if wanted else None}


def scan(dump: Path, text: str, files: dict[str, Path] | None = None) -> dict:
    """Counts, in the dump, each volume key whole and by halves, the share of each
    pattern's records still present, and the share of each file's pages (`files`: host
    files the guest held, by kind). Written next to the dump as ram.json."""
    keys, patterns = planted(text)
    data = dump.read_bytes()
    out: dict = {"dump_bytes": len(data), "keys": {}, "patterns": {}, "files": {}}
    for name, hexkey in keys.items():
        k = bytes.fromhex(hexkey)
        h = len(k) // 2
        out["keys"][name] = {"bits": len(k) * 8, "whole": data.count(k),
                             "first_half": data.count(k[:h]), "second_half": data.count(k[h:])}
    found: dict[str, set[int]] = {}
    for m in RECORD.finditer(data):
        found.setdefault(m.group(1).decode(), set()).add(int(m.group(2)))
    for kind, (path, seed, records) in patterns.items():
        left = len(found.get(seed, set()))
        out["patterns"][kind] = {"path": path, "records": records, "left": left,
                                 "percent_left": round(100.0 * left / records, 3)}
    for kind, path in (files or {}).items():
        out["files"][kind] = file_pages_left(data, path)
    (dump.parent / "ram.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def key_total(c: dict) -> int:
    return c["whole"] + c["first_half"] + c["second_half"]


def scan_and_drop(dump: Path, text: str, files: dict[str, Path] | None = None) -> dict:
    """scan(), then the dump (1 GiB) is deleted unless EXITRD_VM_KEEP_RAM is set: ram.json
    keeps the counts, and a dump holds the guest's secrets."""
    try:
        return scan(dump, text, files)
    finally:
        if not os.environ.get("EXITRD_VM_KEEP_RAM"):
            dump.unlink(missing_ok=True)
