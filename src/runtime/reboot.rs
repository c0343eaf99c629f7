//! The final act: sync, then `reboot(2)` with the verb systemd gave us.

use crate::runtime::log;
use crate::runtime::worker::bounded;
use crate::say;
use nix::sys::reboot::{reboot, RebootMode};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Reboot,
    PowerOff,
    Halt,
    Kexec,
}

impl Verb {
    /// systemd passes `reboot`, `poweroff`, `halt`, `kexec` or `exit` (containers; we power
    /// off). Anything else is unknown: reboot, the choice that leaves a machine usable.
    pub fn parse(word: &str) -> Option<Verb> {
        match word {
            "reboot" => Some(Verb::Reboot),
            "poweroff" | "exit" => Some(Verb::PowerOff),
            "halt" => Some(Verb::Halt),
            "kexec" => Some(Verb::Kexec),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Reboot => "reboot",
            Verb::PowerOff => "poweroff",
            Verb::Halt => "halt",
            Verb::Kexec => "kexec",
        }
    }
}

/// The final sync's bound when no deadline cuts it (after a panic).
pub const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Flushes file systems with a deadline: `sync(2)` can block for long on a dead device.
/// Whether the sync finished in time.
pub fn bounded_sync(timeout: Duration) -> bool {
    let outcome = bounded(timeout, || {
        nix::unistd::sync();
        Ok(())
    });
    if !outcome.is_done() {
        say!("sync: {outcome}");
    }
    outcome.is_done()
}

static REBOOT_PARAM: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Reads the argument of `systemctl reboot ARG` while `/run` is still mounted (the run
/// lets go of `/run` before the end, see `release`); [`finish`] uses what was read.
pub fn remember_param() {
    REBOOT_PARAM.get_or_init(read_reboot_param);
}

fn read_reboot_param() -> Option<String> {
    let text = std::fs::read_to_string("/run/systemd/reboot-param").ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn reboot_param() -> Option<String> {
    REBOOT_PARAM.get_or_init(read_reboot_param).clone()
}

fn kexec_loaded() -> bool {
    std::fs::read_to_string("/sys/kernel/kexec_loaded")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// `LINUX_REBOOT_CMD_RESTART2` with the argument systemd stored for `systemctl reboot ARG`.
fn restart2(arg: &str) -> nix::Result<()> {
    let c_arg = std::ffi::CString::new(arg).map_err(|_| nix::errno::Errno::EINVAL)?;
    // SAFETY: the raw reboot syscall with the documented magic numbers and a valid,
    // NUL-terminated argument string that outlives the call.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_reboot,
            nix::libc::LINUX_REBOOT_MAGIC1,
            nix::libc::LINUX_REBOOT_MAGIC2,
            nix::libc::LINUX_REBOOT_CMD_RESTART2,
            c_arg.as_ptr(),
        )
    };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// Syncs and calls `reboot(2)`. Never returns: if the call fails, it tries a plain reboot,
/// and then keeps trying, because returning would make PID 1 exit and the kernel panic.
pub fn finish(verb: Verb, sync_timeout: Duration) -> ! {
    bounded_sync(sync_timeout);
    power(verb)
}

/// Reboots, powers off, halts or kexecs as `verb` says, without a sync first.
pub fn power(verb: Verb) -> ! {
    let mode = match verb {
        Verb::Reboot => RebootMode::RB_AUTOBOOT,
        Verb::PowerOff => RebootMode::RB_POWER_OFF,
        Verb::Halt => RebootMode::RB_HALT_SYSTEM,
        Verb::Kexec if kexec_loaded() => RebootMode::RB_KEXEC,
        Verb::Kexec => {
            say!("kexec requested but no kernel image is loaded: rebooting instead");
            RebootMode::RB_AUTOBOOT
        }
    };
    if verb == Verb::Reboot {
        if let Some(arg) = reboot_param() {
            say!("{}: rebooting with argument {arg:?}", verb.as_str());
            log::flush_console();
            let err = restart2(&arg);
            say!("reboot with argument failed ({err:?}), plain reboot");
        }
    }
    say!(
        "{}",
        match verb {
            Verb::Reboot => "rebooting",
            Verb::PowerOff => "powering off",
            Verb::Halt => "halting",
            Verb::Kexec => "kexec",
        }
    );
    log::flush_console();
    loop {
        let err = reboot(mode);
        say!("reboot(2) failed: {err:?}; trying a plain reboot");
        log::flush_console();
        let _ = reboot(RebootMode::RB_AUTOBOOT);
        // Not fed here: should reboot(2) keep failing, the watchdog resets the machine.
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        assert_eq!(Verb::parse("poweroff"), Some(Verb::PowerOff));
        assert_eq!(Verb::parse("exit"), Some(Verb::PowerOff));
        assert_eq!(Verb::parse("reboot"), Some(Verb::Reboot));
        assert_eq!(Verb::parse("halt"), Some(Verb::Halt));
        assert_eq!(Verb::parse("kexec"), Some(Verb::Kexec));
        assert_eq!(Verb::parse("dance"), None);
    }
}
