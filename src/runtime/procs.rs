//! Finding and ending the processes that still hold the old root.

use crate::runtime::worker::reap_all;
use crate::say;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// `PF_KTHREAD` from the kernel's `include/linux/sched.h`, field 9 of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    /// Root-owned with `argv[0]` starting with `@`: systemd's convention for processes
    /// that serve the root storage (nbd-client, iscsid) and must live until it is closed.
    pub marked: bool,
}

/// Parses the part of `/proc/PID/stat` we need: comm, state and flags.
/// `comm` may contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, char, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let flags = rest.get(6)?.parse().ok()?;
    Some((comm, state, flags))
}

/// Every user-space process but ourselves, skipping kernel threads and zombies.
pub fn list(proc_root: &Path) -> Vec<Proc> {
    let me = std::process::id() as i32;
    let ours = crate::runtime::worker::abandoned();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut procs: Vec<Proc> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid != 1 && !ours.contains(&pid))
        .filter_map(|pid| {
            let dir = proc_root.join(pid.to_string());
            let (comm, state, flags) = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
            if flags & PF_KTHREAD != 0 || state == 'Z' || state == 'X' {
                return None;
            }
            let owner_root = fs::metadata(&dir).map(|m| m.uid() == 0).unwrap_or(false);
            let argv0_marked = fs::read(dir.join("cmdline"))
                .map(|c| c.first() == Some(&b'@'))
                .unwrap_or(false);
            Some(Proc {
                pid,
                comm,
                marked: owner_root && argv0_marked,
            })
        })
        .collect();
    procs.sort_by_key(|p| p.pid);
    procs
}

/// Whether `path` lives on the mount at `mount_point`: it is below it and below none of
/// the other mount points (a file in /oldroot/dev is on the /oldroot/dev mount, not on
/// /oldroot).
fn on_mount(path: &Path, mount_point: &str, mount_points: &[String]) -> bool {
    let path = path.to_string_lossy();
    let path = path.trim_end_matches(" (deleted)");
    crate::plan::in_scope(path, mount_point)
        && !mount_points.iter().any(|m| {
            m.len() > mount_point.len()
                && crate::plan::in_scope(m, mount_point)
                && crate::plan::in_scope(path, m)
        })
}

/// How `pid` uses the mount at `mount_point`: its working directory, an open file, a
/// memory-mapped file, or its root directory. `None` if it does not. `mount_points` are
/// all current mount points, to tell which mount a path is on.
pub fn how_it_holds(
    proc_root: &Path,
    pid: i32,
    mount_point: &str,
    mount_points: &[String],
) -> Option<String> {
    let under = |path: &Path, prefix: &str| on_mount(path, prefix, mount_points);
    let prefix = mount_point;
    let dir = proc_root.join(pid.to_string());
    let link_under = |link: &str| {
        fs::read_link(dir.join(link))
            .ok()
            .filter(|target| under(target, prefix))
    };
    if let Some(cwd) = link_under("cwd") {
        return Some(format!("working directory {}", cwd.display()));
    }
    if let Ok(fds) = fs::read_dir(dir.join("fd")) {
        for fd in fds.filter_map(|e| e.ok()) {
            if let Ok(target) = fs::read_link(fd.path()) {
                if target.is_absolute() && under(&target, prefix) {
                    return Some(format!("open file {}", target.display()));
                }
            }
        }
    }
    if let Ok(maps) = fs::read_to_string(dir.join("maps")) {
        // The path is the sixth column and may contain spaces.
        for line in maps.lines() {
            if let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) {
                if path.starts_with('/') && under(Path::new(path), prefix) {
                    return Some(format!("memory-mapped file {path}"));
                }
            }
        }
    }
    // Every process of the old system has its root there: the least specific reason.
    link_under("root").map(|root| format!("root directory {}", root.display()))
}

/// One entry per process that holds the mount at `mount_point`: `PID (comm) via HOW`.
pub fn blockers(mount_point: &str, mount_points: &[String]) -> Vec<String> {
    let proc_root = Path::new("/proc");
    list(proc_root)
        .into_iter()
        .filter_map(|p| {
            let how = how_it_holds(proc_root, p.pid, mount_point, mount_points)?;
            let mark = if p.marked { ", spared as @" } else { "" };
            Some(format!("{} ({}{mark}) via {how}", p.pid, p.comm))
        })
        .collect()
}

fn names(procs: &[Proc]) -> String {
    let shown: Vec<String> = procs
        .iter()
        .take(12)
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    let more = procs.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Sends SIGTERM (and SIGCONT, so stopped processes can act on it), waits up to `grace`,
/// then SIGKILLs what is left and waits a little more. With `spare_marked`, `@` processes
/// are left alone. Returns the processes still alive at the end.
pub fn end_processes(spare_marked: bool, grace: Duration) -> Vec<Proc> {
    let proc_root = Path::new("/proc");
    let targets = |all: Vec<Proc>| -> Vec<Proc> {
        all.into_iter()
            .filter(|p| !(spare_marked && p.marked))
            .collect()
    };
    let first = targets(list(proc_root));
    if first.is_empty() {
        return first;
    }
    say!(
        "sending SIGTERM to {} process(es): {}",
        first.len(),
        names(&first)
    );
    for p in &first {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGCONT);
    }
    let left = wait_gone(&first, grace, proc_root);
    if left.is_empty() {
        return left;
    }
    say!(
        "sending SIGKILL to {} process(es): {}",
        left.len(),
        names(&left)
    );
    for p in &left {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let left = wait_gone(&left, Duration::from_secs(2), proc_root);
    if !left.is_empty() {
        say!(
            "{} process(es) did not die (stuck in the kernel?): {}",
            left.len(),
            names(&left)
        );
    }
    left
}

fn wait_gone(procs: &[Proc], limit: Duration, proc_root: &Path) -> Vec<Proc> {
    let start = Instant::now();
    loop {
        reap_all();
        let alive: Vec<i32> = list(proc_root).iter().map(|p| p.pid).collect();
        let left: Vec<Proc> = procs
            .iter()
            .filter(|p| alive.contains(&p.pid))
            .cloned()
            .collect();
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0";
        let (comm, state, flags) = parse_stat(stat).unwrap();
        assert_eq!(comm, "my (odd) proc");
        assert_eq!(state, 'S');
        assert_eq!(flags, 4194560);
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0";
        assert_ne!(parse_stat(kthread).unwrap().2 & PF_KTHREAD, 0);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn finds_how_a_process_holds_a_path() {
        let me = std::process::id() as i32;
        let dir = std::env::temp_dir().join(format!("exitrd-hold-{me}"));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("held file");
        let _open = fs::File::create(&file).unwrap();
        let d = dir.to_str().unwrap().to_string();
        let how = how_it_holds(Path::new("/proc"), me, &d, std::slice::from_ref(&d)).unwrap();
        assert_eq!(how, format!("open file {}", file.display()));
        assert_eq!(
            how_it_holds(Path::new("/proc"), me, "/nonexistent-prefix", &[]),
            None
        );
        // With a mount below it holding that file, the file is not on the outer mount.
        let inner = vec![d.clone(), format!("{d}/held file")];
        assert!(!on_mount(&file, &d, &inner));
        assert!(on_mount(&file, &inner[1], &inner));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lists_this_test_process_family_without_itself() {
        let me = std::process::id() as i32;
        let procs = list(Path::new("/proc"));
        assert!(procs.iter().all(|p| p.pid != me));
    }
}
