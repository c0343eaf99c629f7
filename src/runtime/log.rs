//! Logging for the shutdown runtime: every line goes to the console (what reaches a serial
//! console before power-off) and to `/dev/kmsg` (kept by pstore/netconsole and seen by
//! `dmesg` when the exitrd hands back to a shell). Prefix `exitrd:`.
//!
//! Neither may stop the shutdown or lose lines quietly:
//! - `/dev/kmsg` rate-limits each open file to 10 lines per 5 s unless the kernel command
//!   line says `printk.devkmsg=on`, and drops the rest without telling the writer. Each
//!   line is therefore written through a file opened for it alone.
//! - A serial console with hardware flow control and nothing attached never drains: our
//!   own non-blocking descriptor of `/dev/console` gets a short wait per line, and once a
//!   wait ran out only what fits right away is written (the kernel log still has it all).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one line may wait for a console that does not take it.
const CONSOLE_WAIT: Duration = Duration::from_millis(200);
/// How long the final drain of the console may take.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

static CONSOLE: Mutex<Option<File>> = Mutex::new(None);
/// The console's descriptor for the fatal-signal handler, which must not take locks.
static CONSOLE_FD: AtomicI32 = AtomicI32::new(-1);
/// A line has waited in vain: the console is not draining.
static CONSOLE_STALLED: AtomicBool = AtomicBool::new(false);
/// `/dev/kmsg` is written (only the shutdown runtime does; the commands print to stdout).
static KMSG: AtomicBool = AtomicBool::new(false);
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Starts logging to the console and the kernel log.
pub fn init(debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    KMSG.store(true, Ordering::Relaxed);
    let Ok(mut slot) = CONSOLE.lock() else { return };
    if slot.is_some() {
        return;
    }
    let console = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open("/dev/console");
    if let Ok(f) = console {
        CONSOLE_FD.store(f.as_raw_fd(), Ordering::Relaxed);
        *slot = Some(f);
    }
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// The console descriptor, for the fatal-signal handler; -1 when there is none.
pub fn console_fd() -> i32 {
    CONSOLE_FD.load(Ordering::Relaxed)
}

/// Writes one line. Never fails and never blocks for long: a logger that can stop a
/// shutdown is worse than none.
pub fn line(msg: &str) {
    let text = format!("exitrd: {msg}\n");
    let console = CONSOLE.try_lock();
    match console.as_ref().ok().and_then(|c| c.as_ref()) {
        Some(f) => {
            let wait = if CONSOLE_STALLED.load(Ordering::Relaxed) {
                Duration::ZERO
            } else {
                CONSOLE_WAIT
            };
            if !write_within(f, text.as_bytes(), wait) {
                CONSOLE_STALLED.store(true, Ordering::Relaxed);
            }
        }
        None => {
            let mut out = io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
    drop(console);
    if KMSG.load(Ordering::Relaxed) {
        to_kmsg(&text);
    }
}

/// One line into the kernel log through a file of its own (see the module comment).
/// `<5>` is "notice": above the default console threshold's noise, below warnings.
fn to_kmsg(text: &str) {
    if let Ok(mut kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(format!("<5>{}", text.trim_end()).as_bytes());
    }
}

/// Writes `bytes` to the non-blocking `fd`, waiting at most `wait` in all for room.
/// Returns false when it gave up with bytes unwritten.
pub fn write_within(fd: &impl AsFd, bytes: &[u8], wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let end = Instant::now() + wait;
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                super::watchdog::feed();
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(ms));
            }
            Err(_) => return false,
        }
    }
    true
}

/// Waits until everything written to the console has left the UART, so the last lines are
/// not cut off by the power-off; in a worker, since a console that never drains would hold
/// `tcdrain` forever.
pub fn flush_console() {
    let _ = io::stdout().flush();
    if CONSOLE_STALLED.load(Ordering::Relaxed) {
        return;
    }
    let fd = console_fd();
    if fd < 0 {
        return;
    }
    let _ = super::worker::bounded(DRAIN_WAIT, move || {
        // SAFETY: the descriptor stays open in the worker, a copy of this process.
        let console = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sys::termios::tcdrain(console).map_err(io::Error::from)
    });
}

#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::runtime::log::line(&format!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::runtime::log::debug_enabled() {
            $crate::runtime::log::line(&format!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};

    /// A console that never drains (a full pipe stands in for a UART held by flow
    /// control): the line is given up after the wait, not blocked on.
    #[test]
    fn a_console_that_does_not_drain_costs_only_the_wait() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        fcntl(writer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let chunk = [b'x'; 4096];
        while nix::unistd::write(&writer, &chunk).is_ok() {}
        let started = Instant::now();
        assert!(!write_within(
            &writer,
            b"exitrd: lost\n",
            Duration::from_millis(100)
        ));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "blocked: {took:?}");
        drop(reader);
    }

    #[test]
    fn a_draining_console_gets_the_whole_line() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        fcntl(writer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        assert!(write_within(&writer, b"exitrd: kept\n", Duration::ZERO));
        drop(writer);
        let mut got = String::new();
        io::Read::read_to_string(&mut File::from(reader), &mut got).unwrap();
        assert_eq!(got, "exitrd: kept\n");
    }
}
