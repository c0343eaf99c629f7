//! Logging for the shutdown runtime: every line goes to the console (stdout, which is what
//! reaches a serial console before power-off) and to `/dev/kmsg` (kept by pstore/netconsole
//! and seen by `dmesg` when the exitrd hands back to a shell). Prefix `exitrd:`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static KMSG: Mutex<Option<File>> = Mutex::new(None);
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Opens `/dev/kmsg` for writing; without it only the console gets the lines.
pub fn init(debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        if let Ok(mut slot) = KMSG.lock() {
            *slot = Some(f);
        }
    }
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Writes one line. Never fails: a logger that can stop a shutdown is worse than none.
pub fn line(msg: &str) {
    let text = format!("exitrd: {msg}");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    drop(out);
    if let Ok(mut slot) = KMSG.try_lock() {
        if let Some(kmsg) = slot.as_mut() {
            // <5> is "notice": above the default console threshold's noise, below warnings.
            let _ = kmsg.write_all(format!("<5>{text}").as_bytes());
        }
    }
}

/// Waits until everything written to the console has left the UART, so the last lines are
/// not cut off by the power-off.
pub fn flush_console() {
    let _ = std::io::stdout().flush();
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
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
