//! Bounded execution: every operation that can block in the kernel (umount, DM ioctls,
//! STOP_ARRAY, sync) runs in a forked child. If the child does not finish in time it is
//! abandoned (it may be stuck in D state and unkillable) and the shutdown goes on.
//!
//! The parent feeds the watchdog while it waits, so the operation itself (a teardown
//! function with a retry loop of its own) need not know about the watchdog.

use crate::runtime::watchdog;
use crate::teardown::Closed;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe, read, write, ForkResult, Pid};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// Workers that overran their time and were left behind (probably in D state).
static ABANDONED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Pids of abandoned workers: our own children stuck in the kernel, not processes of the
/// old system to end.
pub fn abandoned() -> Vec<i32> {
    ABANDONED.lock().map(|v| v.clone()).unwrap_or_default()
}

/// True in a forked worker: the panic hook then only ends the worker, never the machine.
pub fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Nothing to do: what the step would close had already gone (a device-mapper
    /// device under deferred removal goes by itself when its last user closes it).
    Gone,
    Failed(io::Error),
    TimedOut,
    /// Done, but without the goodbye the device's protocol has (see [`Closed::Dropped`]);
    /// the text says why.
    Dropped(String),
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done | Outcome::Gone | Outcome::Dropped(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done => write!(f, "done"),
            Outcome::Gone => write!(f, "already gone"),
            Outcome::Failed(e) => write!(f, "{e}"),
            Outcome::TimedOut => write!(f, "timed out (left running in the background)"),
            Outcome::Dropped(why) => write!(f, "done without the protocol's goodbye: {why}"),
        }
    }
}

/// A worker's exit code when its operation found the device already gone
/// ([`Closed::Gone`]); errno values stay below it (Linux's largest is 133).
const GONE_EXIT: i32 = 254;
/// A worker's exit code when its operation closed the device without its protocol's
/// goodbye ([`Closed::Dropped`]); the reason goes through the error pipe.
const DROPPED_EXIT: i32 = 253;
/// A worker's exit code for an error without an errno.
const OTHER_ERROR_EXIT: i32 = 255;

/// The exit code a worker reports `e` with: its errno, if it has one that fits.
fn exit_code(e: &io::Error) -> i32 {
    errno(e)
        .filter(|c| (1..DROPPED_EXIT).contains(c))
        .unwrap_or(OTHER_ERROR_EXIT)
}

/// Runs `op` in a child process and waits at most `timeout` for it.
///
/// The child reports failure as its exit code (the errno, or 255) and writes the error
/// text into a pipe, so the parent can log exactly what the kernel said.
pub fn bounded<F: FnOnce() -> io::Result<()>>(timeout: Duration, op: F) -> Outcome {
    bounded_close(timeout, || op().map(|()| Closed::Done))
}

/// [`bounded`] for an operation that closes a device and may find it gone already:
/// [`Closed::Gone`] comes back as [`Outcome::Gone`].
pub fn bounded_close<F: FnOnce() -> io::Result<Closed>>(timeout: Duration, op: F) -> Outcome {
    bounded_patient(Patience::fixed(timeout), op)
}

/// How long a step's worker is waited for: `stalled` at first; then, while the kernel
/// keeps working for it (the worker's CPU time grows), on up to `limit`. An unmount that
/// frees much memory under `init_on_free=1`, or a swapoff that reads pages back, is slow
/// work in progress on a slow or busy machine: given up on, it would leave everything
/// under it busy for nothing. A worker asleep in the kernel (a dead server, a suspended
/// device) uses no CPU and is still given up on after `stalled`.
#[derive(Clone, Debug)]
pub struct Patience {
    pub stalled: Duration,
    pub limit: Duration,
    /// Said in the log when the wait goes on past `stalled` ("unmounting /oldroot").
    pub doing: Option<String>,
}

impl Patience {
    pub fn fixed(timeout: Duration) -> Patience {
        Patience {
            stalled: timeout,
            limit: timeout,
            doing: None,
        }
    }
}

/// CPU time (clock ticks, user + system) a worker must have used in the last
/// [`PROGRESS_WINDOW`] to count as making progress: a tenth of a CPU.
const PROGRESS_TICKS: u64 = 10;
const PROGRESS_WINDOW: Duration = Duration::from_secs(1);

/// [`bounded_close`] with a wait that goes on while the worker makes progress.
pub fn bounded_patient<F: FnOnce() -> io::Result<Closed>>(patience: Patience, op: F) -> Outcome {
    let (reader, writer, forked) = match start_worker() {
        Ok(started) => started,
        // Not run inline: an operation that can block forever must never run in PID 1
        // without a bound. The caller logs the step as failed and the shutdown goes on.
        Err(e) => {
            return Outcome::Failed(io::Error::new(
                e.kind(),
                format!("cannot start a worker ({e}): not run, since it could block for good"),
            ))
        }
    };
    match forked {
        ForkResult::Child => {
            IN_WORKER.store(true, Ordering::Relaxed);
            drop(reader);
            let code = match op() {
                Ok(Closed::Done) => 0,
                Ok(Closed::Gone) => GONE_EXIT,
                Ok(Closed::Dropped(why)) => {
                    let _ = write(&writer, why.as_bytes());
                    DROPPED_EXIT
                }
                Err(e) => {
                    let _ = write(&writer, e.to_string().as_bytes());
                    exit_code(&e)
                }
            };
            // SAFETY: _exit skips atexit handlers and destructors, which belong to the parent.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let outcome = wait_for(child, &patience);
            let text = || {
                let mut buf = [0u8; 512];
                let n = read(reader.as_raw_fd(), &mut buf).unwrap_or(0);
                String::from_utf8_lossy(&buf[..n]).into_owned()
            };
            match outcome {
                Outcome::Dropped(_) => {
                    let why = text();
                    Outcome::Dropped(if why.is_empty() {
                        "no reason given".into()
                    } else {
                        why
                    })
                }
                Outcome::Failed(e) => {
                    let text = text();
                    if text.is_empty() {
                        Outcome::Failed(e)
                    } else {
                        let errno = e.raw_os_error();
                        Outcome::Failed(io::Error::new(e.kind(), WorkerError { text, errno }))
                    }
                }
                other => other,
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests make worker starts fail on their own thread.
    static FAIL_STARTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A pipe and a forked child, retried briefly: fork fails with EAGAIN while memory or
/// the process table is short, which the kill of the old system's processes relieves.
fn start_worker() -> io::Result<(OwnedFd, OwnedFd, ForkResult)> {
    let mut last = io::Error::other("no attempt");
    for attempt in 0..3 {
        if attempt > 0 {
            watchdog::sleep(Duration::from_millis(50));
        }
        #[cfg(test)]
        if FAIL_STARTS.with(|f| f.get()) {
            last = io::Error::from_raw_os_error(nix::libc::EAGAIN);
            continue;
        }
        let (reader, writer) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        // SAFETY: the shutdown runtime is single-threaded, so the child inherits no lock
        // held by another thread; the child only runs the operation and leaves with _exit.
        match unsafe { fork() } {
            Ok(forked) => return Ok((reader, writer, forked)),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Runs `op` in a worker that writes its result into a pipe, and returns what it wrote:
/// all of it if it finished within `timeout`, what it had written until then if not (the
/// worker is then abandoned like any other). For reads that can block forever in the
/// kernel: a process's `/proc/PID/cmdline` and `maps` take that process's mmap lock, which
/// a process stuck on a dead NBD, NFS or FUSE mapping may hold for good. Without a pipe or
/// a fork, nothing is run: the caller gets an error and goes on without the answer.
pub fn bounded_output<F: FnOnce(&mut std::fs::File) -> io::Result<()>>(
    timeout: Duration,
    op: F,
) -> (Outcome, Vec<u8>) {
    let (reader, writer, forked) = match start_worker() {
        Ok(started) => started,
        Err(e) => return (Outcome::Failed(e), Vec::new()),
    };
    match forked {
        ForkResult::Child => {
            IN_WORKER.store(true, Ordering::Relaxed);
            drop(reader);
            let mut out = std::fs::File::from(writer);
            let code = match op(&mut out) {
                Ok(()) => 0,
                Err(e) => exit_code(&e),
            };
            // SAFETY: _exit skips atexit handlers and destructors, which belong to the parent.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let mut out = Vec::new();
            let fd = reader.as_raw_fd();
            // Drained while waiting, so a worker with much to say never blocks on a full pipe.
            let flags = nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
            let drain = |out: &mut Vec<u8>| {
                let mut buf = [0u8; 4096];
                while let Ok(n) = read(fd, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            };
            let start = Instant::now();
            loop {
                drain(&mut out);
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(WaitStatus::Exited(_, 0)) => {
                        drain(&mut out);
                        return (Outcome::Done, out);
                    }
                    Ok(WaitStatus::Exited(_, code)) => {
                        drain(&mut out);
                        return (Outcome::Failed(io::Error::from_raw_os_error(code)), out);
                    }
                    Ok(_) => {}
                    Err(e) => return (Outcome::Failed(io::Error::from(e)), out),
                }
                if start.elapsed() >= timeout {
                    let _ = kill(child, Signal::SIGKILL);
                    if let Ok(mut v) = ABANDONED.lock() {
                        v.push(child.as_raw());
                    }
                    return (Outcome::TimedOut, out);
                }
                watchdog::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// A worker's error as the parent sees it: the child's message, and the errno it exited
/// with, so callers can still tell `EBUSY` from `ENXIO` (see [`errno`]).
#[derive(Debug)]
struct WorkerError {
    text: String,
    errno: Option<i32>,
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for WorkerError {}

/// The OS error number behind an error of `bounded`'s operation, whether it ran in a
/// worker or inline.
pub fn errno(e: &io::Error) -> Option<i32> {
    crate::teardown::devnode::errno(e).or_else(|| {
        e.get_ref()?
            .downcast_ref::<WorkerError>()
            .and_then(|w| w.errno)
    })
}

/// A process's CPU time so far (clock ticks, user + system), from `/proc/PID/stat`
/// (which, unlike `cmdline`, takes none of the process's locks).
fn cpu_ticks(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime from a `/proc/PID/stat` line: fields 14 and 15, counted after the
/// command name, which is in parentheses and may itself hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn wait_for(child: Pid, patience: &Patience) -> Outcome {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let timeout = patience.stalled;
    // Past `stalled`: the start of the current progress window and the CPU time then.
    let mut window: Option<(Instant, u64)> = None;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, 0)) => return Outcome::Done,
            Ok(WaitStatus::Exited(_, GONE_EXIT)) => return Outcome::Gone,
            Ok(WaitStatus::Exited(_, DROPPED_EXIT)) => return Outcome::Dropped(String::new()),
            Ok(WaitStatus::Exited(_, OTHER_ERROR_EXIT)) => {
                return Outcome::Failed(io::Error::other("failed"));
            }
            Ok(WaitStatus::Exited(_, code)) => {
                return Outcome::Failed(io::Error::from_raw_os_error(code));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Outcome::Failed(io::Error::other(format!("worker killed by {sig}")));
            }
            Ok(_) => {}
            Err(e) => return Outcome::Failed(io::Error::other(format!("waitpid: {e}"))),
        }
        let elapsed = start.elapsed();
        if elapsed >= patience.limit.max(timeout) {
            return give_up(child);
        }
        if elapsed >= timeout {
            let now = Instant::now();
            // The worker's CPU time is read once a window, at its end: is it still going?
            let window_over = window.is_none_or(|(since, _)| now - since >= PROGRESS_WINDOW);
            if window_over {
                let Some(ticks) = cpu_ticks(child) else {
                    return give_up(child);
                };
                match window {
                    None => {
                        if let Some(doing) = &patience.doing {
                            crate::say!(
                                "{doing}: still going after {}s; waiting while the kernel works on it (up to {}s in all)",
                                timeout.as_secs(),
                                patience.limit.as_secs()
                            );
                        }
                    }
                    Some((_, before)) if ticks.saturating_sub(before) < PROGRESS_TICKS => {
                        return give_up(child);
                    }
                    Some(_) => {}
                }
                window = Some((now, ticks));
            }
        }
        watchdog::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Abandons a worker that overran its time.
fn give_up(child: Pid) -> Outcome {
    // May not die if it sits in D state; reap_all() collects it if it ever does.
    let _ = kill(child, Signal::SIGKILL);
    if let Ok(mut v) = ABANDONED.lock() {
        v.push(child.as_raw());
    }
    Outcome::TimedOut
}

/// Collects every exited child (PID 1 inherits all orphans). Returns how many were reaped.
pub fn reap_all() -> usize {
    let mut n = 0;
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No worker, no operation: it must not run in the calling process (PID 1) where
    /// nothing could bound it.
    #[test]
    fn without_a_worker_nothing_runs_inline() {
        use std::sync::atomic::AtomicBool;
        static RAN: AtomicBool = AtomicBool::new(false);
        FAIL_STARTS.with(|f| f.set(true));
        let outcome = bounded(Duration::from_secs(1), || {
            RAN.store(true, Ordering::Relaxed);
            Ok(())
        });
        let (output_outcome, out) = bounded_output(Duration::from_secs(1), |_| {
            RAN.store(true, Ordering::Relaxed);
            Ok(())
        });
        FAIL_STARTS.with(|f| f.set(false));
        assert!(
            !RAN.load(Ordering::Relaxed),
            "the operation ran without a worker"
        );
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome}");
        assert!(
            outcome.to_string().contains("cannot start a worker"),
            "{outcome}"
        );
        assert!(matches!(output_outcome, Outcome::Failed(_)) && out.is_empty());
    }

    #[test]
    fn done_failed_and_timed_out() {
        assert!(bounded(Duration::from_secs(5), || Ok(())).is_done());
        match bounded(Duration::from_secs(5), || {
            Err(io::Error::from_raw_os_error(nix::libc::EBUSY))
        }) {
            Outcome::Failed(e) => {
                assert!(e.to_string().contains("busy"), "{e}");
                assert_eq!(errno(&e), Some(nix::libc::EBUSY));
            }
            other => panic!("expected failure, got {other}"),
        }
        // The child's message comes back whole, and its errno stays reachable.
        match bounded(Duration::from_secs(5), || {
            Err(crate::teardown::devnode::with_context(
                io::Error::from_raw_os_error(nix::libc::ENXIO),
                "device-mapper: removing 'x'",
            ))
        }) {
            Outcome::Failed(e) => {
                assert!(
                    e.to_string().starts_with("device-mapper: removing 'x': "),
                    "{e}"
                );
                assert_eq!(errno(&e), Some(nix::libc::ENXIO));
            }
            other => panic!("expected failure, got {other}"),
        }
        // A device found gone comes back as such, not as done or failed.
        assert!(matches!(
            bounded_close(Duration::from_secs(5), || Ok(Closed::Gone)),
            Outcome::Gone
        ));
        assert!(matches!(
            bounded_close(Duration::from_secs(5), || Ok(Closed::Done)),
            Outcome::Done
        ));
        // Closed without the protocol's goodbye: done, with the reason the worker gave.
        let dropped = bounded_close(Duration::from_secs(5), || {
            Ok(Closed::Dropped(
                "the target did not answer within 5.0s".into(),
            ))
        });
        assert!(dropped.is_done(), "{dropped}");
        match dropped {
            Outcome::Dropped(why) => assert_eq!(why, "the target did not answer within 5.0s"),
            other => panic!("expected dropped, got {other}"),
        }
        let start = Instant::now();
        let outcome = bounded(Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        });
        assert!(matches!(outcome, Outcome::TimedOut));
        assert!(!abandoned().is_empty(), "the stuck worker is remembered");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// The parent feeds the watchdog while a worker runs, whichever way it waits for it.
    #[test]
    fn waiting_for_a_worker_feeds_the_watchdog() {
        let slow = || {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        };
        let fed = watchdog::testing::feeds_during(|| {
            assert!(bounded(Duration::from_secs(5), slow).is_done());
        });
        assert!(fed >= 2, "fed {fed} times while waiting");
        let fed = watchdog::testing::feeds_during(|| {
            let (outcome, _) = bounded_output(Duration::from_secs(5), |_| slow());
            assert!(outcome.is_done());
        });
        assert!(fed >= 2, "fed {fed} times while waiting");
    }

    #[test]
    fn output_comes_back_whole_or_up_to_the_timeout() {
        use std::io::Write;
        // More than a pipe holds: the parent drains while it waits.
        let (outcome, out) = bounded_output(Duration::from_secs(10), |w| {
            for i in 0..20_000 {
                writeln!(w, "line {i}")?;
            }
            Ok(())
        });
        assert!(outcome.is_done());
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 20_000);
        // A worker that blocks after a first answer: that answer, and a bounded wait.
        let start = Instant::now();
        let (outcome, out) = bounded_output(Duration::from_millis(300), |w| {
            writeln!(w, "first")?;
            w.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        });
        assert!(matches!(outcome, Outcome::TimedOut));
        assert_eq!(out, b"first\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "42 (a) b (c)) R 1 42 42 0 -1 4194560 100 0 0 0 7 35 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
        assert_eq!(parse_cpu_ticks("42 (x) R 1"), None);
        assert!(cpu_ticks(nix::unistd::getpid()).is_some());
    }

    fn patience(stalled_ms: u64, limit_ms: u64) -> Patience {
        Patience {
            stalled: Duration::from_millis(stalled_ms),
            limit: Duration::from_millis(limit_ms),
            doing: Some("test step".into()),
        }
    }

    /// A worker that keeps a CPU busy (the kernel freeing memory for an unmount, as seen
    /// from outside) is waited for past `stalled`; one asleep is given up on soon after.
    #[test]
    fn a_busy_worker_gets_time_a_sleeping_one_does_not() {
        let start = Instant::now();
        let busy = bounded_patient(patience(200, 20_000), || {
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(2500) {
                std::hint::black_box(0u64);
            }
            Ok(Closed::Done)
        });
        assert!(busy.is_done(), "busy worker: {busy}");
        assert!(start.elapsed() >= Duration::from_millis(2500));

        let start = Instant::now();
        let asleep = bounded_patient(patience(200, 20_000), || {
            std::thread::sleep(Duration::from_secs(10));
            Ok(Closed::Done)
        });
        assert!(
            matches!(asleep, Outcome::TimedOut),
            "sleeping worker: {asleep}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );

        // Busy or not, never past the limit.
        let start = Instant::now();
        let capped = bounded_patient(patience(200, 1500), || loop {
            std::hint::black_box(0u64);
        });
        assert!(matches!(capped, Outcome::TimedOut));
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }
}
