//! Every failure ends in `reboot(2)`: a panic in PID 1 or a fatal signal (an abort, a
//! crash) would otherwise end in a kernel panic and, by Debian's default, a hung machine.

use super::log;
use super::reboot::{self, Verb};
use super::worker;
use crate::say;
use std::sync::atomic::{AtomicU8, Ordering};

static VERB_FOR_PANIC: AtomicU8 = AtomicU8::new(0);

fn verb_code(v: Verb) -> u8 {
    match v {
        Verb::Reboot => 0,
        Verb::PowerOff => 1,
        Verb::Halt => 2,
        Verb::Kexec => 3,
    }
}

fn verb_from_code(c: u8) -> Verb {
    match c {
        1 => Verb::PowerOff,
        2 => Verb::Halt,
        3 => Verb::Kexec,
        _ => Verb::Reboot,
    }
}

/// A panic in PID 1 would end in a kernel panic: log it, sync, and reboot as asked instead.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if worker::in_worker() {
            // SAFETY: leaving a forked worker without running the parent's destructors.
            unsafe { nix::libc::_exit(255) }
        }
        // One line: the panic message may contain newlines.
        let text = info.to_string().replace('\n', " ");
        say!("internal error: {text}; finishing the shutdown");
        reboot::finish(
            verb_from_code(VERB_FOR_PANIC.load(Ordering::Relaxed)),
            reboot::FINAL_SYNC_TIMEOUT,
        )
    }));
}

/// An abort (out of memory, a panic while panicking) or a crash would kill PID 1, and the
/// kernel would panic and, by Debian's default, hang: instead say so, start the kernel's
/// emergency sync (asynchronous, so it cannot block us), give it a moment, and reboot as
/// asked. Only async-signal-safe calls in the handler: no allocation, no locks.
fn install_fatal_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        // On the alternate stack Rust's runtime sets up, so a stack overflow is caught too.
        SaFlags::SA_ONSTACK | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGABRT,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGSYS,
    ] {
        // SAFETY: the handler only makes async-signal-safe system calls.
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
}

extern "C" fn on_fatal_signal(sig: nix::libc::c_int) {
    use nix::libc;
    let msg: &[u8] = match sig {
        libc::SIGABRT => b"exitrd: fatal: aborted (SIGABRT); emergency sync, then the final reboot call\n",
        libc::SIGSEGV => b"exitrd: fatal: invalid memory access (SIGSEGV); emergency sync, then the final reboot call\n",
        libc::SIGBUS => b"exitrd: fatal: bus error (SIGBUS); emergency sync, then the final reboot call\n",
        _ => b"exitrd: fatal signal; emergency sync, then the final reboot call\n",
    };
    // SAFETY: write, open, close, nanosleep, getpid, reboot and _exit are
    // async-signal-safe; every buffer is static.
    unsafe {
        let console = log::console_fd();
        let _ = libc::write(
            if console >= 0 { console } else { 1 },
            msg.as_ptr().cast(),
            msg.len(),
        );
        let kmsg = libc::open(c"/dev/kmsg".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if kmsg >= 0 {
            let _ = libc::write(kmsg, msg.as_ptr().cast(), msg.len() - 1);
            libc::close(kmsg);
        }
        if libc::getpid() != 1 {
            // Not the shutdown's PID 1 (a test): never reboot the machine we run on.
            libc::_exit(128 + sig);
        }
        let sysrq = libc::open(
            c"/proc/sysrq-trigger".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if sysrq >= 0 {
            let _ = libc::write(sysrq, b"s".as_ptr().cast(), 1);
            libc::close(sysrq);
            let pause = libc::timespec {
                tv_sec: 2,
                tv_nsec: 0,
            };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        let cmd = match verb_from_code(VERB_FOR_PANIC.load(Ordering::Relaxed)) {
            Verb::PowerOff => libc::RB_POWER_OFF,
            Verb::Halt => libc::RB_HALT_SYSTEM,
            Verb::Reboot | Verb::Kexec => libc::RB_AUTOBOOT,
        };
        loop {
            libc::reboot(cmd);
            libc::reboot(libc::RB_AUTOBOOT);
            libc::nanosleep(
                &libc::timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                },
                std::ptr::null_mut(),
            );
        }
    }
}

/// Installs the panic hook and the fatal signal handlers; until [`remember_verb`] is
/// called, both reboot.
pub fn install() {
    install_panic_hook();
    install_fatal_signal_handlers();
}

/// The verb a panic or a fatal signal ends with.
pub fn remember_verb(verb: Verb) {
    VERB_FOR_PANIC.store(verb_code(verb), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An abort in the shutdown's PID 1 goes through our handler (which, not being PID 1
    /// here, exits with 128 + SIGABRT instead of rebooting) rather than killing the process.
    #[test]
    fn abort_is_caught_by_the_fatal_signal_handler() {
        // SAFETY: the child only makes async-signal-safe calls (sigaction, abort's raise,
        // and the handler's own) before it ends; the parent waits for it.
        let pid = unsafe { nix::libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            install_fatal_signal_handlers();
            std::process::abort();
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        unsafe { nix::libc::waitpid(pid, &mut status, 0) };
        assert!(
            nix::libc::WIFEXITED(status),
            "the child was killed by signal {} instead of going through the handler",
            nix::libc::WTERMSIG(status)
        );
        assert_eq!(nix::libc::WEXITSTATUS(status), 128 + nix::libc::SIGABRT);
    }
}
