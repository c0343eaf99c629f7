//! Finding and ending the processes that still hold the old root.
//!
//! PID 1 reads only what cannot block on another process: `/proc/PID/stat`, `status` and
//! `cgroup`. `cmdline` and `maps` take the target's mmap lock, which a process stuck on a
//! dead NBD, NFS or FUSE mapping can hold forever, so they are read in bounded workers.

use crate::runtime::watchdog;
use crate::runtime::worker::{bounded_output, reap_all};
use crate::say;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long PID 1 waits for a worker reading other processes' memory-backed /proc files.
const PROC_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Where systemd's cgroup tree is (the exitrd sees the old system's /sys).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `PF_KTHREAD` from the kernel's `include/linux/sched.h`, field 9 of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    /// Why systemd's final kill left it alone, and so do we until the file systems are
    /// gone; `None` for an ordinary process.
    pub spared: Option<Spared>,
}

/// systemd-shutdown's rules for processes that survive its final kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spared {
    /// Real uid 0 and `argv[0]` starting with `@`: storage daemons such as nbd-client
    /// (systemd's documented convention). open-iscsi's iscsid does not mark itself so, and
    /// is ended with the rest: exitrd logs out of iSCSI sessions itself, and an iscsid
    /// alive would take the kernel's answers for its own (see `teardown::iscsi`).
    At,
    /// In a cgroup marked `SurviveFinalKillSignal=` (the cgroup's
    /// `user.survive_final_kill_signal` or `trusted.survive_final_kill_signal` xattr).
    SurvivorCgroup,
}

impl Spared {
    fn label(self) -> &'static str {
        match self {
            Spared::At => "spared as @",
            Spared::SurvivorCgroup => "spared: SurviveFinalKillSignal",
        }
    }
}

/// The real uid from `/proc/PID/status` (`Uid:` real, effective, saved, fs). The owner
/// of `/proc/PID` is no use: it is root for every non-dumpable process.
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The unified (v2) cgroup path from `/proc/PID/cgroup` (`0::/system.slice/x.service`).
fn cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Whether the cgroup carries systemd's survive-the-final-kill mark, as systemd reads it:
/// the `user.` xattr (kernel 5.7 and later), else the `trusted.` one.
fn survivor_cgroup(cgroup_root: &Path, path: &str) -> bool {
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    [
        "user.survive_final_kill_signal",
        "trusted.survive_final_kill_signal",
    ]
    .iter()
    .find_map(|name| xattr(&dir, name))
    .is_some_and(|v| crate::config::parse_bool(v.trim()).unwrap_or(false))
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel
    // writes at most buf.len() bytes into buf.
    let n = unsafe {
        nix::libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Of `pids`, those whose `argv[0]` starts with `@`, read by `cmdline_first_byte` for each.
fn at_marked(pids: &[i32], cmdline_first_byte: &dyn Fn(i32) -> Option<u8>) -> BTreeSet<i32> {
    pids.iter()
        .copied()
        .filter(|&pid| cmdline_first_byte(pid) == Some(b'@'))
        .collect()
}

fn first_cmdline_byte(proc_root: &Path, pid: i32) -> Option<u8> {
    use std::io::Read;
    let mut f = fs::File::open(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let mut b = [0u8; 1];
    (f.read(&mut b).ok()? == 1).then_some(b[0])
}

/// The `@` marks of `pids`, read in a bounded worker: a process whose cmdline cannot be
/// read in time counts as unmarked (it is stuck in the kernel; signals are all it gets).
fn at_marked_bounded(proc_root: &Path, pids: &[i32]) -> BTreeSet<i32> {
    if pids.is_empty() {
        return BTreeSet::new();
    }
    let (_, out) = bounded_output(PROC_READ_TIMEOUT, |w| {
        for &pid in pids {
            let marked = first_cmdline_byte(proc_root, pid) == Some(b'@');
            writeln!(w, "{pid} {}", u8::from(marked))?;
        }
        Ok(())
    });
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.strip_suffix(" 1")?.parse().ok())
        .collect()
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
    list_with(proc_root, Path::new(CGROUP_ROOT), &|pids| {
        at_marked_bounded(proc_root, pids)
    })
}

/// Pids of the live user-space processes (stat only: no worker needed).
fn alive_pids(proc_root: &Path) -> Vec<i32> {
    scan(proc_root).into_iter().map(|(pid, _)| pid).collect()
}

/// (pid, comm) of every user-space process but ourselves and our abandoned workers.
fn scan(proc_root: &Path) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let ours = crate::runtime::worker::abandoned();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<(i32, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid != 1 && !ours.contains(&pid))
        .filter_map(|pid| {
            let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
            let (comm, state, flags) = parse_stat(&stat)?;
            let user_space = flags & PF_KTHREAD == 0 && state != 'Z' && state != 'X';
            user_space.then_some((pid, comm))
        })
        .collect();
    found.sort_by_key(|(pid, _)| *pid);
    found
}

/// `list` with the cgroup tree's root and the `@` reader given (tests give fixtures).
fn list_with(
    proc_root: &Path,
    cgroup_root: &Path,
    read_at_marks: &dyn Fn(&[i32]) -> BTreeSet<i32>,
) -> Vec<Proc> {
    let mut procs: Vec<Proc> = scan(proc_root)
        .into_iter()
        .map(|(pid, comm)| {
            let dir = proc_root.join(pid.to_string());
            let survivor = fs::read_to_string(dir.join("cgroup"))
                .ok()
                .and_then(|t| cgroup_path(&t).map(|p| survivor_cgroup(cgroup_root, p)))
                .unwrap_or(false);
            Proc {
                pid,
                comm,
                spared: survivor.then_some(Spared::SurvivorCgroup),
            }
        })
        .collect();
    // Only processes running as root can claim the `@` mark (systemd's rule).
    let root_owned: Vec<i32> = procs
        .iter()
        .filter(|p| p.spared.is_none())
        .filter(|p| {
            fs::read_to_string(proc_root.join(p.pid.to_string()).join("status"))
                .ok()
                .and_then(|s| real_uid(&s))
                == Some(0)
        })
        .map(|p| p.pid)
        .collect();
    let marked = read_at_marks(&root_owned);
    for p in &mut procs {
        if marked.contains(&p.pid) {
            p.spared = Some(Spared::At);
        }
    }
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
/// Read in one bounded worker (maps and cmdline can block); when it overruns, the
/// entries found until then and a last one saying so.
pub fn blockers(mount_point: &str, mount_points: &[String]) -> Vec<String> {
    let proc_root = Path::new("/proc");
    let (outcome, out) = bounded_output(PROC_READ_TIMEOUT, |w| {
        let direct = |pids: &[i32]| at_marked(pids, &|pid| first_cmdline_byte(proc_root, pid));
        for p in list_with(proc_root, Path::new(CGROUP_ROOT), &direct) {
            if let Some(how) = how_it_holds(proc_root, p.pid, mount_point, mount_points) {
                let mark = p
                    .spared
                    .map(|s| format!(", {}", s.label()))
                    .unwrap_or_default();
                writeln!(w, "{} ({}{mark}) via {how}", p.pid, p.comm)?;
                w.flush()?;
            }
        }
        Ok(())
    });
    let mut lines: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    if !outcome.is_done() {
        lines.push(format!("(no more: reading /proc stopped: {outcome})"));
    }
    lines
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
            .filter(|p| !(spare_marked && p.spared.is_some()))
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
        let alive = alive_pids(proc_root);
        let left: Vec<Proc> = procs
            .iter()
            .filter(|p| alive.contains(&p.pid))
            .cloned()
            .collect();
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        watchdog::sleep(Duration::from_millis(50));
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
    fn spared_by_real_uid_and_at_or_by_survivor_cgroup() {
        let me = std::process::id();
        let root = std::env::temp_dir().join(format!("exitrd-procs-{me}"));
        let _ = fs::remove_dir_all(&root);
        let proc_root = root.join("proc");
        let cgroups = root.join("cgroup");
        // pid, comm, real uid, effective uid, cmdline, cgroup
        let procs = [
            (
                10,
                "nbd-client",
                0,
                0,
                "@nbd-client\0-persist\0",
                "/system.slice/nbd.service",
            ),
            // Not root by its real uid (a setuid program): the @ does not count.
            (11, "sneaky", 1000, 0, "@sneaky\0", "/user.slice/u.scope"),
            (12, "bash", 0, 0, "bash\0", "/user.slice/u.scope"),
            (
                13,
                "podman",
                1000,
                1000,
                "conmon\0",
                "/system.slice/keep.service",
            ),
        ];
        for (pid, comm, ruid, euid, cmdline, cgroup) in procs {
            let d = proc_root.join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            let stat = format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0");
            fs::write(d.join("stat"), stat).unwrap();
            let status = format!("Name:\t{comm}\nUid:\t{ruid}\t{euid}\t{euid}\t{euid}\n");
            fs::write(d.join("status"), status).unwrap();
            fs::write(d.join("cmdline"), cmdline).unwrap();
            fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            fs::create_dir_all(cgroups.join(cgroup.trim_start_matches('/'))).unwrap();
        }
        let keep = cgroups.join("system.slice/keep.service");
        assert!(
            xattr_set(&keep, "user.survive_final_kill_signal", "1"),
            "cannot set a user xattr in {} (the test needs a file system with them)",
            keep.display()
        );
        let direct = |pids: &[i32]| at_marked(pids, &|pid| first_cmdline_byte(&proc_root, pid));
        let list = list_with(&proc_root, &cgroups, &direct);
        let spared = |pid| list.iter().find(|p| p.pid == pid).unwrap().spared;
        assert_eq!(spared(10), Some(Spared::At));
        assert_eq!(spared(11), None, "real uid 1000");
        assert_eq!(spared(12), None);
        assert_eq!(
            spared(13),
            Some(Spared::SurvivorCgroup),
            "cgroup mark, any uid"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    fn xattr_set(path: &Path, name: &str, value: &str) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of the given length.
        let rc = unsafe {
            nix::libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        rc == 0
    }

    #[test]
    fn status_and_cgroup_fields() {
        assert_eq!(real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some(1000));
        assert_eq!(real_uid("Name:\tx\n"), None);
        assert_eq!(
            cgroup_path("1:name=systemd:/old\n0::/system.slice/a.service\n"),
            Some("/system.slice/a.service")
        );
    }

    #[test]
    fn lists_this_test_process_family_without_itself() {
        let me = std::process::id() as i32;
        let procs = list(Path::new("/proc"));
        assert!(procs.iter().all(|p| p.pid != me));
    }
}
