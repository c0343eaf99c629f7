//! Feeding the hardware watchdog. systemd-shutdown leaves it armed for the reboot and says
//! so in `WATCHDOG_USEC`; if we stopped feeding it, a slow but healthy shutdown would be
//! cut short by a hardware reset. We never disarm it (no magic close): should the final
//! `reboot(2)` ever hang, the watchdog still resets the machine.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `WDIOC_KEEPALIVE` from `<linux/watchdog.h>`: `_IOR('W', 5, int)`.
const WDIOC_KEEPALIVE: nix::sys::ioctl::ioctl_num_type =
    nix::request_code_read!(b'W', 5, std::mem::size_of::<nix::libc::c_int>());

struct Dog {
    file: File,
    every: Duration,
    last: Instant,
}

static DOG: Mutex<Option<Dog>> = Mutex::new(None);

/// The feeding interval for a `WATCHDOG_USEC` value: a third of the timeout, so two
/// missed feeds still leave time. `None` when the watchdog is not armed.
pub fn interval(watchdog_usec: Option<&str>) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 3).max(Duration::from_millis(100)))
}

/// The watchdog systemd armed: `WATCHDOG_DEVICE` when set (systemd passes its
/// `WatchdogDevice=` setting, e.g. `/dev/watchdog1`), else the default device.
pub fn device(watchdog_device: Option<&str>, exists: &dyn Fn(&str) -> bool) -> Option<String> {
    match watchdog_device.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => Some(d.to_string()),
        None => ["/dev/watchdog0", "/dev/watchdog"]
            .into_iter()
            .find(|p| exists(p))
            .map(String::from),
    }
}

/// Opens the watchdog if systemd left it armed. Returns a line to log, if any. systemd
/// arms it (`RebootWatchdogSec=`, `KExecWatchdogSec=`) for a reboot or kexec only; for
/// a power-off it passes `WATCHDOG_USEC=0`.
pub fn init() -> Option<String> {
    let every = interval(std::env::var("WATCHDOG_USEC").ok().as_deref())?;
    let Some(device) = device(std::env::var("WATCHDOG_DEVICE").ok().as_deref(), &|p| {
        std::path::Path::new(p).exists()
    }) else {
        return Some("watchdog armed (WATCHDOG_USEC) but no /dev/watchdog0 or /dev/watchdog: it cannot be fed".into());
    };
    match OpenOptions::new().write(true).open(&device) {
        Ok(file) => {
            if let Ok(mut slot) = DOG.lock() {
                *slot = Some(Dog {
                    file,
                    every,
                    last: Instant::now() - every,
                });
            }
            feed();
            Some(format!(
                "feeding the hardware watchdog {device} every {}ms",
                every.as_millis()
            ))
        }
        Err(e) => Some(format!("watchdog armed but {device} cannot be opened: {e}")),
    }
}

/// Keeps the watchdog alive if it is due. Cheap; called from every wait loop.
pub fn feed() {
    let Ok(mut slot) = DOG.try_lock() else { return };
    let Some(dog) = slot.as_mut() else { return };
    if dog.last.elapsed() < dog.every {
        return;
    }
    // SAFETY: WDIOC_KEEPALIVE ignores its argument on every driver; a valid pointer to a
    // local int is passed anyway, as the header's _IOR declares.
    let mut unused: nix::libc::c_int = 0;
    unsafe {
        nix::libc::ioctl(dog.file.as_raw_fd(), WDIOC_KEEPALIVE, &mut unused);
    }
    dog.last = Instant::now();
    #[cfg(test)]
    testing::FEEDS.with(|n| n.set(n.get() + 1));
}

/// Sleeps for `d` while keeping the watchdog fed.
pub fn sleep(d: Duration) {
    let end = Instant::now() + d;
    loop {
        feed();
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A stand-in watchdog for tests of the wait loops.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Feeds made on this thread (a test's own, whatever other tests do meanwhile).
        pub(super) static FEEDS: Cell<usize> = const { Cell::new(0) };
    }

    /// Runs `f` with a watchdog due at every feed (`/dev/null`: the keepalive ioctl fails
    /// there, harmlessly) and returns how many times `f` fed it.
    pub(crate) fn feeds_during(f: impl FnOnce()) -> usize {
        let Ok(file) = OpenOptions::new().write(true).open("/dev/null") else {
            panic!("cannot open /dev/null");
        };
        if let Ok(mut slot) = DOG.lock() {
            *slot = Some(Dog {
                file,
                every: Duration::ZERO,
                last: Instant::now(),
            });
        }
        FEEDS.with(|n| n.set(0));
        f();
        let fed = FEEDS.with(|n| n.get());
        if let Ok(mut slot) = DOG.lock() {
            *slot = None;
        }
        fed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teardown::devnode::abi_probe;

    #[test]
    fn keepalive_request_matches_the_header() {
        abi_probe::check(&[("WDIOC_KEEPALIVE", abi_probe::ioctl_code(WDIOC_KEEPALIVE))]);
    }

    #[test]
    fn the_device_systemd_names_wins() {
        let only_default = |p: &str| p == "/dev/watchdog";
        assert_eq!(
            device(Some("/dev/watchdog1"), &only_default).as_deref(),
            Some("/dev/watchdog1")
        );
        assert_eq!(
            device(Some(""), &only_default).as_deref(),
            Some("/dev/watchdog")
        );
        assert_eq!(
            device(None, &only_default).as_deref(),
            Some("/dev/watchdog")
        );
        assert_eq!(device(None, &|_| false), None);
    }

    #[test]
    fn interval_from_watchdog_usec() {
        assert_eq!(interval(None), None);
        assert_eq!(interval(Some("0")), None);
        assert_eq!(interval(Some("junk")), None);
        assert_eq!(interval(Some("30000000")), Some(Duration::from_secs(10)));
        assert_eq!(interval(Some("30")), Some(Duration::from_millis(100)));
    }
}
