//! Feeding the hardware watchdog. systemd-shutdown leaves it armed for the reboot and says
//! so in `WATCHDOG_USEC`; if we stopped feeding it, a slow but healthy shutdown would be
//! cut short by a hardware reset. We never disarm it (no magic close): should the final
//! `reboot(2)` ever hang, the watchdog still resets the machine.
//!
//! There is no feeder thread: PID 1 feeds from its own wait loops ([`sleep`], the waits for
//! workers and hooks, a console write that has to wait). So a PID 1 that stops running
//! its sequence stops feeding, and the watchdog resets the machine; forked workers never
//! feed (see [`feed`]), or one left running in the background could keep a wedged PID 1
//! alive.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
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
///
/// Only PID 1 itself feeds. A forked worker inherits the open device, and its keepalive
/// would reach the hardware just the same: a worker looping in the background (abandoned
/// after its timeout) must not vouch for a PID 1 that has stopped.
pub fn feed() {
    if super::worker::in_worker() {
        return;
    }
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

/// Feeds the watchdog no more, for good: [`feed`] does nothing from here on. The device
/// stays open and armed: closing it without the magic character would make the kernel
/// ping it once more (and log "watchdog did not stop!"), so its descriptor is kept, unused.
/// For the test fault of a wedged PID 1, which only the watchdog's reset may end.
pub fn stop_feeding() {
    let dog = match DOG.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(dog) = dog {
        let _kept_open = dog.file.into_raw_fd();
    }
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

    /// The stand-in is the one global watchdog: tests that use it take turns, or one
    /// test's `stop_feeding` would starve another's count.
    static TURN: Mutex<()> = Mutex::new(());

    /// Runs `f` with a watchdog due at every feed (`/dev/null`: the keepalive ioctl fails
    /// there, harmlessly) and returns how many times `f` fed it.
    pub(crate) fn feeds_during(f: impl FnOnce()) -> usize {
        let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
    fn no_feeding_after_stop_feeding() {
        let fed = testing::feeds_during(|| sleep(Duration::from_millis(50)));
        assert!(fed > 0, "the control: sleep feeds a due watchdog");
        let fed = testing::feeds_during(|| {
            stop_feeding();
            sleep(Duration::from_millis(250));
            feed();
        });
        assert_eq!(fed, 0, "fed after stop_feeding");
    }

    /// A forked worker, whatever it runs, never feeds: only PID 1 vouches for itself.
    #[test]
    fn a_worker_never_feeds() {
        use crate::runtime::worker::{bounded, Outcome};
        let outcome = std::cell::RefCell::new(None);
        testing::feeds_during(|| {
            *outcome.borrow_mut() = Some(bounded(Duration::from_secs(10), || {
                // In the child: its own copy of this thread's count.
                let before = testing::FEEDS.with(|n| n.get());
                sleep(Duration::from_millis(250));
                feed();
                match testing::FEEDS.with(|n| n.get()) - before {
                    0 => Ok(()),
                    n => Err(std::io::Error::other(format!("the worker fed {n} times"))),
                }
            }));
        });
        let outcome = outcome.into_inner();
        assert!(
            matches!(outcome, Some(Outcome::Done)),
            "worker: {outcome:?}"
        );
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
