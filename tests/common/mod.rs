//! Helpers for the integration tests that mount file systems (they need root).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Fails the test unless it runs as root, saying why it needs to.
#[track_caller]
pub fn require_root(why: &str) {
    let uid = fs::metadata("/proc/self").unwrap().uid();
    if uid != 0 {
        panic!("{why}: run it as root (sh scripts/test does), not as uid {uid}");
    }
}

/// The mountinfo lines of what is mounted exactly at `path`.
pub fn mounts_at(path: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

/// Creates `dir` and mounts a tmpfs with shared propagation on it, like `/run` under
/// systemd: `MS_MOVE` out of a shared parent is refused, which once broke `prepare` on
/// booted systems.
pub fn shared_tmpfs(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap_or_else(|e| {
        panic!(
            "mounting a tmpfs on {} (needs root with CAP_SYS_ADMIN): {e}",
            dir.display()
        )
    });
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
}
