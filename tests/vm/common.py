"""What every part of the harness shares: paths, the cache folder, printing (one label per
suite thread), running commands, hashing for cache keys, guest script texts, timings."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"
CACHE = Path(os.environ.get("EXITRD_VM_CACHE", "/var/tmp/exitrd-vm"))


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


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def indent(text: str) -> str:
    return "\n".join("    | " + l for l in text.splitlines())


# Stage and boot timings, printed at the end of a run (see runner.print_stats).
STATS: list[tuple[str, float]] = []


def stat(what: str, secs: float) -> None:
    STATS.append((what, secs))
