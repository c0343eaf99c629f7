#![no_main]
//! The sysfs block graph reader, then everything `exitrd plan` does with what it read,
//! must never panic, hang or blow up on any tree: the shutdown reads the kernel's sysfs as
//! PID 1, and `exitrd plan --root` reads whatever directory it is given.
//!
//! The input is a list of entries `PATH NUL CONTENTS NUL` (the last NUL may be left
//! out), written into a fresh directory before each run:
//!
//! - `PATH` is below `sys/class/block/` (`vda/dev`, `dm-0/dm/uuid`), or below the root
//!   when it starts with `proc/` or `sys/` (`proc/self/mountinfo`, `proc/swaps`,
//!   `proc/mdstat`, `sys/devices/...` where a live system's class entries lead);
//! - a `PATH` ending in `/` is a directory (its contents are ignored), one ending in `@`
//!   a symbolic link whose target is `CONTENTS` (`vda1@` -> `../vda/vda1`), anything
//!   else a file; missing parent directories are made;
//! - empty, absolute or `..` paths are left out, and so are symbolic links that lead out
//!   of the tree (the reader would read the host's files, `/dev/zero` for ever) and
//!   entries that clash with what earlier ones made.
//!
//! `fuzz/corpus/block/` holds the fixture trees of `tests/fixtures` in this form
//! (written by `fuzz/make-corpus`).

use exitrd::plan::{plan, storage_roots, PlanOptions};
use exitrd::topology::{block, Topology};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries beyond this are left out: a real class/block tree of a small VM has a few
/// hundred files, and the fuzzer's inputs are a few KiB.
const MAX_ENTRIES: usize = 512;

/// A fresh directory name for one run, in TMPDIR (`scripts/fuzz` points it at a directory
/// of its own, on a tmpfs when there is one, and removes it at the end).
fn scratch() -> PathBuf {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("exitrd-fuzz-block-{}-{n}", std::process::id()))
}

/// `PATH` as a relative path below the root, or None when it must be left out.
fn relative(path: &[u8]) -> Option<PathBuf> {
    let path = Path::new(OsStr::from_bytes(path));
    let mut out = if path.starts_with("proc") || path.starts_with("sys") {
        PathBuf::new()
    } else {
        PathBuf::from("sys/class/block")
    };
    let mut parts = 0;
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                parts += 1;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    (parts > 0).then_some(out)
}

/// Whether a symbolic link in the directory `dir` to `target` stays below `root` (both
/// canonical): `..` only at the start of the target, never more of them than `dir` is
/// deep. Links made before are checked the same way, so the names after the `..` resolve
/// inside the tree too.
fn stays_inside(root: &Path, dir: &Path, target: &[u8]) -> bool {
    let Ok(inside) = dir.strip_prefix(root) else {
        return false;
    };
    let mut up = inside.components().count();
    let mut names = false;
    for c in Path::new(OsStr::from_bytes(target)).components() {
        match c {
            Component::Normal(_) => names = true,
            Component::CurDir => {}
            Component::ParentDir if !names && up > 0 => up -= 1,
            _ => return false,
        }
    }
    true
}

fn build(root: &Path, data: &[u8]) {
    let real_root = fs::canonicalize(root).expect("scratch directory");
    let mut fields = data.split(|&b| b == 0);
    for _ in 0..MAX_ENTRIES {
        let Some(path) = fields.next() else { break };
        let contents = fields.next().unwrap_or_default();
        let (path, kind) = match path.last() {
            Some(b'/') => (&path[..path.len() - 1], b'/'),
            Some(b'@') => (&path[..path.len() - 1], b'@'),
            _ => (path, b'f'),
        };
        let Some(rel) = relative(path) else { continue };
        let at = root.join(rel);
        if kind == b'/' {
            // Clashes (a file where a directory is wanted, names too long) are left out.
            let _ = fs::create_dir_all(&at);
            continue;
        }
        let Some(dir) = at.parent().and_then(|d| {
            fs::create_dir_all(d).ok()?;
            fs::canonicalize(d).ok()
        }) else {
            continue;
        };
        let _ = match kind {
            b'@' if stays_inside(&real_root, &dir, contents) => {
                symlink(OsStr::from_bytes(contents), &at)
            }
            b'@' => continue,
            _ => fs::write(&at, contents),
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let root = scratch();
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("scratch directory");
    build(&root, data);

    let topo = Topology::read(&root).unwrap_or_else(|_| {
        // No mountinfo: plan the devices alone.
        Topology {
            devices: block::read(&root),
            ..Topology::default()
        }
    });
    for d in topo.devices.values() {
        let _ = (d.display_name(), d.describe(), d.is_closable());
    }
    for opts in [PlanOptions::live(), PlanOptions::shutdown()] {
        let p = plan(&topo, &opts);
        let storage = storage_roots(&topo, &opts, &p);
        for s in &p.steps {
            let _ = (s.describe(), s.closes_device());
        }
        // What `exitrd plan --json` prints.
        serde_json::to_string(&(&storage, &p.steps, &p.warnings)).expect("plan as JSON");
    }
    fs::remove_dir_all(&root).expect("removing the scratch directory");
});
