//! Hook executables from the payload, run at named stages of the shutdown:
//! - `start`: before processes are ended (everything still up);
//! - `unmounted`: the old root's file systems are gone, the devices are still open
//!   (ZFS `zpool export`, disconnecting network disks after their last user);
//! - `final`: everything is done, just before sync and `reboot(2)`.
//!
//! Each hook gets `STAGE VERB` as arguments and `EXITRD_STAGE`, `EXITRD_VERB`,
//! `EXITRD_INVENTORY` (a file listing what is still mounted and open) in its environment,
//! runs in its own process group, and is killed with its group when it overruns its time.

use crate::runtime::{log, watchdog};
use crate::say;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Executable files in `dir`, in name order (`10-foo` before `50-bar`).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut hooks: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .collect();
    hooks.sort();
    hooks
}

/// Makes `cmd` start with default signal dispositions and an empty signal mask. PID 1
/// ignores SIGTERM, SIGINT, SIGHUP and SIGPIPE, and ignored signals stay ignored across
/// exec: a hook or the break shell would otherwise be deaf to them (and `timeout`, `kill`
/// and a closed pipe would not stop what it starts).
pub fn with_default_signals(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls sigaction and
    // sigprocmask, which are async-signal-safe, on stack data.
    unsafe {
        cmd.pre_exec(|| {
            use nix::libc;
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        })
    }
}

/// Runs every hook of `stage` under `hooks_root`, each bounded by `timeout` (which the
/// caller cuts to what is left of the deadline). Returns how many succeeded and how many
/// failed or were killed.
pub fn run_stage(
    hooks_root: &Path,
    stage: &str,
    verb: &str,
    inventory: &Path,
    timeout: Duration,
) -> (usize, usize) {
    let (mut ok, mut bad) = (0, 0);
    for hook in list(&hooks_root.join(stage)) {
        let name = format!(
            "{stage}/{}",
            hook.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let started = Instant::now();
        let child = with_default_signals(&mut Command::new(&hook))
            .args([stage, verb])
            .env("EXITRD_STAGE", stage)
            .env("EXITRD_VERB", verb)
            .env("EXITRD_INVENTORY", inventory)
            .process_group(0)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                say!("hook {name}: cannot start: {e}");
                bad += 1;
                continue;
            }
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() < timeout => {
                    watchdog::sleep(Duration::from_millis(20))
                }
                Ok(None) => break None,
                Err(e) => {
                    say!("hook {name}: wait failed: {e}");
                    break None;
                }
            }
        };
        match status {
            Some(s) if s.success() => {
                say!(
                    "hook {name}: done in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                ok += 1;
            }
            Some(s) => {
                say!("hook {name}: failed ({s}), going on");
                bad += 1;
            }
            None => {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                say!(
                    "hook {name}: still running after {}s: killed, going on",
                    timeout.as_secs()
                );
                bad += 1;
            }
        }
    }
    (ok, bad)
}

/// `exitrd.break=shell`: a shell on the console before the final reboot, bounded so an
/// unattended machine still powers off.
pub fn break_shell(limit: Duration) {
    let Some(shell) = ["/bin/sh", "/sh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        say!("exitrd.break=shell: no shell in the payload; going on");
        return;
    };
    say!(
        "exitrd.break=shell: starting {shell}; the shutdown goes on when it exits or after {}s",
        limit.as_secs()
    );
    log::flush_console();
    let Ok(mut child) = with_default_signals(&mut std::process::Command::new(shell)).spawn() else {
        say!("could not start {shell}");
        return;
    };
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        watchdog::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    say!("shell time is up: going on");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn script(path: &Path, body: &str) {
        fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// SIGHUP ignored here stands for PID 1's ignored signals: the child must not
    /// inherit that (its SigIgn mask in /proc lacks the bit).
    #[test]
    fn hooks_start_with_default_signal_dispositions() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        let ignored_bit = |child_status: &str| {
            let line = child_status
                .lines()
                .find(|l| l.starts_with("SigIgn:"))
                .expect("SigIgn line");
            let mask = u64::from_str_radix(line["SigIgn:".len()..].trim(), 16).unwrap();
            mask & (1 << (Signal::SIGHUP as u64 - 1)) != 0
        };
        let status_of = |cmd: &mut Command| {
            let out = cmd.args(["-c", "cat /proc/self/status"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        // SAFETY: SIG_IGN runs no code of ours; the previous disposition is put back.
        let before = unsafe { signal(Signal::SIGHUP, SigHandler::SigIgn) }.unwrap();
        let plain = status_of(&mut Command::new("/bin/sh"));
        let reset = status_of(with_default_signals(&mut Command::new("/bin/sh")));
        // SAFETY: restoring the disposition saved above.
        unsafe { signal(Signal::SIGHUP, before) }.unwrap();
        assert!(
            ignored_bit(&plain),
            "the control: an ignored signal is inherited"
        );
        assert!(!ignored_bit(&reset), "the hook still ignores SIGHUP");
    }

    #[test]
    fn hooks_run_in_order_with_arguments_and_a_hanging_one_is_killed() {
        let root = std::env::temp_dir().join(format!("exitrd-hooks-{}", std::process::id()));
        let stage = root.join("unmounted");
        fs::create_dir_all(&stage).unwrap();
        let out = root.join("out");
        script(
            &stage.join("10-record"),
            &format!(
                "echo \"$1 $2 $EXITRD_STAGE $EXITRD_INVENTORY\" >> {}",
                out.display()
            ),
        );
        script(&stage.join("20-hang"), "sleep 30");
        script(&stage.join("30-fail"), "exit 3");
        fs::write(stage.join("40-not-executable"), "x").unwrap();
        let started = Instant::now();
        let (ok, bad) = run_stage(
            &root,
            "unmounted",
            "poweroff",
            Path::new("/inv"),
            Duration::from_millis(500),
        );
        assert_eq!((ok, bad), (1, 2));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "unmounted poweroff unmounted /inv\n"
        );
        assert_eq!(list(&root.join("missing")), Vec::<PathBuf>::new());
        fs::remove_dir_all(&root).unwrap();
    }
}
