//! The shutdown runtime: PID 1 inside systemd's exitrd pivot, old root at `/oldroot`.
//!
//! Order: sync; `start` hooks; end the processes still alive (sparing `@` processes that
//! may serve the storage); swapoff and unmount everything below `/oldroot`; `unmounted`
//! hooks; close the devices top-down; end the spared processes and retry what is left;
//! make busy file systems read-only and detach them; suspend DM devices that stay and wipe
//! dm-crypt keys; `final` hooks; inventory; sync; `reboot(2)`.
//!
//! Every blocking operation runs bounded (see [`worker`]), the whole run is bounded by one
//! deadline, the watchdog is fed throughout, and every path, panics included, ends in
//! [`reboot::finish`].

pub mod deadline;
pub mod hooks;
pub mod log;
pub mod procs;
pub mod reboot;
pub mod schedule;
pub mod watchdog;
pub mod worker;

use crate::config::{self, Config};
use crate::plan::{self, PlanOptions, Step};
use crate::teardown::{dm, loopdev, md, nbd, swap};
use crate::topology::block::DevKind;
use crate::topology::Topology;
use crate::{debug, say};
use deadline::Deadline;
use reboot::Verb;
use schedule::{Executor, Limits, Progress};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use worker::{bounded, bounded_close, Outcome};

const OLDROOT: &str = "/oldroot";
/// Where sysfs is mounted.
const SYS: &str = "/sys";
/// Where the payload lives after the pivot: the root of the exitrd tmpfs.
const CONFIG_FILE: &str = "/exitrd.conf";
const HOOKS_DIR: &str = "/hooks";
const INVENTORY_FILE: &str = "/inventory";
/// Test-only fault switches (`exitrd.fault=`) are honoured only when this file is in the
/// payload, which no package ships: the VM tests put it there.
const FAULTS_ALLOWED_FILE: &str = "/test-faults-allowed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub verb: Option<Verb>,
    pub verb_word: String,
    pub timeout: Option<Duration>,
}

/// argv after the program name: the verb, then systemd's options. Unknown options are
/// ignored so a newer systemd never breaks a shutdown.
pub fn parse_args(args: &[String]) -> Args {
    let verb_word = args.first().cloned().unwrap_or_default();
    let timeout = args
        .iter()
        .skip(1)
        .filter_map(|a| a.strip_prefix("--timeout="))
        .find_map(config::parse_duration);
    Args {
        verb: Verb::parse(&verb_word),
        verb_word,
        timeout,
    }
}

/// The bound for the whole run: the configured timeout, but inside systemd's own.
pub fn budget(cfg: &Config, systemd_timeout: Option<Duration>) -> Duration {
    let within_systemd = systemd_timeout
        .map(|t| t.saturating_sub(deadline::RESERVE))
        .filter(|t| !t.is_zero())
        .unwrap_or(cfg.timeout);
    cfg.timeout.min(within_systemd)
}

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

/// PID 1 starts with whatever signal state systemd-shutdown left. Children must be
/// waitable (SIGCHLD not ignored), a closed pipe must not kill us, and Ctrl-Alt-Del
/// (SIGINT to PID 1) must not interrupt the shutdown.
fn reset_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: installing SIG_DFL/SIG_IGN dispositions runs no code of ours in a handler.
    unsafe {
        let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = signal(Signal::SIGTERM, SigHandler::SigIgn);
    }
}

/// Started some other way than by systemd's pivot (as `rdinit=`, say), /proc, /sys and
/// /dev may be missing: mount them, or nothing can be read or logged.
fn ensure_api_mounts() {
    use nix::mount::{mount, MsFlags};
    for (dir, probe, fstype) in [
        ("/proc", "/proc/self", "proc"),
        ("/sys", "/sys/class", "sysfs"),
        ("/dev", "/dev/null", "devtmpfs"),
    ] {
        if !Path::new(probe).exists() {
            let _ = std::fs::create_dir_all(dir);
            let _ = mount(
                Some(fstype),
                dir,
                Some(fstype),
                MsFlags::MS_NOSUID,
                None::<&str>,
            );
        }
    }
}

/// Test-only faults from the kernel command line, see [`FAULTS_ALLOWED_FILE`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Faults {
    panic: bool,
    abort: bool,
    verb: Option<String>,
}

fn faults(cmdline: &str) -> Faults {
    let mut f = Faults::default();
    for word in cmdline.split_whitespace() {
        match word.strip_prefix("exitrd.fault=") {
            Some("panic") => f.panic = true,
            Some("abort") => f.abort = true,
            Some(v) => {
                if let Some(verb) = v.strip_prefix("verb:") {
                    f.verb = Some(verb.to_string());
                }
            }
            None => {}
        }
    }
    f
}

fn load_config(cmdline: &str) -> Config {
    let mut cfg = Config::default();
    match std::fs::read(CONFIG_FILE) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            for p in cfg.apply_file(&text) {
                say!("{CONFIG_FILE}: {p}; ignored");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => say!("{CONFIG_FILE}: {e}; using the defaults"),
    }
    for p in cfg.apply_cmdline(cmdline) {
        say!("{p}; ignored");
    }
    cfg
}

/// Entry point of shutdown mode. Never returns.
pub fn run(args: &[String]) -> ! {
    let started = Instant::now();
    // Before anything that could fail: from here on every failure ends in reboot(2).
    install_panic_hook();
    install_fatal_signal_handlers();
    let mut parsed = parse_args(args);
    VERB_FOR_PANIC.store(
        verb_code(parsed.verb.unwrap_or(Verb::Reboot)),
        Ordering::Relaxed,
    );
    reset_signals();
    ensure_api_mounts();
    // The binary lives in a tmpfs that can be swapped out, perhaps to a swap device about
    // to be torn down: keep every page of ours in RAM, now and later.
    let locked = nix::sys::mman::mlockall(
        nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    log::init(cmdline.split_whitespace().any(|w| w == "exitrd.debug"));
    let faults = if Path::new(FAULTS_ALLOWED_FILE).exists() {
        faults(&cmdline)
    } else {
        if cmdline.contains("exitrd.fault=") {
            say!("exitrd.fault= ignored: fault injection is for the test suite only");
        }
        Faults::default()
    };
    if let Some(word) = &faults.verb {
        say!("test fault: acting as if systemd passed the verb {word:?}");
        parsed.verb = Verb::parse(word);
        parsed.verb_word = word.clone();
    }
    let verb = parsed.verb.unwrap_or(Verb::Reboot);
    VERB_FOR_PANIC.store(verb_code(verb), Ordering::Relaxed);
    let cfg = load_config(&cmdline);
    log::init(cfg.debug);
    let budget = budget(&cfg, parsed.timeout);
    say!(
        "exitrd {} running as PID {}: {} within {}s",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        verb.as_str(),
        budget.as_secs()
    );
    if parsed.verb.is_none() {
        say!("unknown verb {:?}: rebooting", parsed.verb_word);
    }
    if let Err(e) = locked {
        say!("could not lock exitrd in memory (mlockall: {e}); going on");
    }
    if let Some(line) = watchdog::init() {
        say!("{line}");
    }
    let mut shutdown = Shutdown {
        cfg,
        verb,
        deadline: Deadline::new(started, budget),
        progress: Progress::default(),
        faults,
        initial_devices: Vec::new(),
    };
    shutdown.teardown();
    shutdown.run_hooks("final");
    shutdown.inventory();
    if shutdown.cfg.break_shell {
        // Not cut to the deadline: asked for on purpose, with its own bound.
        break_shell(shutdown.cfg.shell_timeout);
    }
    say!("finished in {:.1}s", started.elapsed().as_secs_f64());
    reboot::finish(
        verb,
        shutdown
            .deadline
            .cap_last_resort(reboot::FINAL_SYNC_TIMEOUT),
    )
}

struct Shutdown {
    cfg: Config,
    verb: Verb,
    deadline: Deadline,
    progress: Progress,
    faults: Faults,
    /// Closable devices when the teardown began (kernel name, display name): the
    /// inventory counts each as closed once it is gone, whoever removed it (a device
    /// flagged for deferred removal goes by itself when its file system is unmounted).
    initial_devices: Vec<(String, String)>,
}

fn read_topology() -> Option<Topology> {
    match Topology::read(Path::new("/")) {
        Ok(t) => {
            for w in &t.warnings {
                debug!("warning: {w}");
            }
            Some(t)
        }
        Err(e) => {
            say!("cannot read the mount table: {e}");
            None
        }
    }
}

fn oldroot_mounted(topo: &Topology) -> bool {
    topo.mounts.iter().any(|m| m.mount_point == OLDROOT)
}

/// The real machine, for the scheduler.
struct Real<'a> {
    shutdown: &'a Shutdown,
}

impl Executor for Real<'_> {
    fn read(&mut self) -> Option<Topology> {
        read_topology()
    }

    fn run(&mut self, step: &Step, topo: &Topology, timeout: Duration) -> Outcome {
        execute(step, topo, timeout)
    }

    fn elapsed(&self) -> Duration {
        self.shutdown.deadline.elapsed()
    }

    fn pause(&mut self, d: Duration) {
        watchdog::sleep(d);
    }

    fn report(&mut self, step: &Step, outcome: &Outcome) {
        // Only a step that closes a device can find it gone.
        if let (Outcome::Gone, Some(device)) = (outcome, step.closes_device()) {
            // Its name may have left sysfs with it: say the one it had at the start.
            let display = self
                .shutdown
                .initial_devices
                .iter()
                .find(|(n, _)| n == device)
                .map_or(device, |(_, d)| d.as_str());
            say!(
                "{display} ({device}) is gone: removed by the kernel when its last user closed it"
            );
        } else {
            log_outcome(step, outcome);
        }
        if !outcome.is_done() {
            name_blockers(step);
        }
    }
}

fn is_device_step(s: &Step) -> bool {
    s.closes_device().is_some()
}

fn any_step(_: &Step) -> bool {
    true
}

impl Shutdown {
    fn limits(&self) -> Limits {
        Limits {
            deadline: self.deadline.budget(),
            step_timeout: self.cfg.step_timeout,
            max_passes: 8,
        }
    }

    fn passes(&mut self, which: &dyn Fn(&Step) -> bool) {
        let limits = self.limits();
        let mut progress = std::mem::take(&mut self.progress);
        schedule::run_passes(
            &mut Real { shutdown: self },
            which,
            &PlanOptions::shutdown(),
            limits,
            &mut progress,
        );
        if progress.out_of_time {
            say!(
                "deadline of {}s reached: going on to power off",
                self.deadline.budget().as_secs()
            );
        }
        self.progress = progress;
    }

    fn out_of_time(&self) -> bool {
        self.deadline.passed()
    }

    /// Runs the hooks of `stage`; returns how many failed or were killed.
    fn run_hooks(&self, stage: &str) -> usize {
        if hooks::list(&Path::new(HOOKS_DIR).join(stage)).is_empty() {
            return 0;
        }
        write_inventory_file();
        // Hooks get a try even late: the final ones may matter most.
        let timeout = self.deadline.cap_last_resort(self.cfg.step_timeout);
        hooks::run_stage(
            Path::new(HOOKS_DIR),
            stage,
            self.verb.as_str(),
            Path::new(INVENTORY_FILE),
            timeout,
        )
        .1
    }

    fn teardown(&mut self) {
        reboot::bounded_sync(self.deadline.cap(self.cfg.step_timeout));
        let Some(topo) = read_topology() else { return };
        if !oldroot_mounted(&topo) {
            say!("{OLDROOT} is not mounted: not started by systemd's pivot, nothing to take down");
            return;
        }
        self.initial_devices = topo
            .devices
            .values()
            .filter(|d| d.is_closable())
            .map(|d| (d.name.clone(), d.display_name().to_string()))
            .collect();
        if log::debug_enabled() {
            for (i, step) in plan::plan(&topo, &PlanOptions::shutdown())
                .steps
                .iter()
                .enumerate()
            {
                say!("plan {:>2}: {}", i + 1, step.describe());
            }
        }
        self.run_hooks("start");
        procs::end_processes(true, self.deadline.cap(self.cfg.kill_grace));

        self.passes(&|s: &Step| !is_device_step(s));
        if self.faults.panic {
            panic!("test fault exitrd.fault=panic after unmounting");
        }
        if self.faults.abort {
            say!("test fault exitrd.fault=abort: aborting after unmounting");
            std::process::abort();
        }
        let hooks_failed = self.run_hooks("unmounted");
        self.passes(&any_step);

        // What is left may be held by the processes spared so far.
        if self.work_left() && !procs::list(Path::new("/proc")).is_empty() && !self.out_of_time() {
            procs::end_processes(false, self.deadline.cap(self.cfg.kill_grace));
            if hooks_failed > 0 {
                // A hook may have failed over what those processes held (a ZFS dataset
                // they kept mounted keeps its pool from exporting): unmount first, then
                // the `unmounted` stage once more, before any device is closed.
                self.passes(&|s: &Step| !is_device_step(s));
                say!("running the unmounted hooks again: {hooks_failed} failed while spared processes held file systems");
                self.run_hooks("unmounted");
            }
            self.passes(&any_step);
        }
        if self.oldroot_still_mounted() {
            self.force_unmounts();
            self.passes(&any_step);
        }
        self.secure_leftovers();
    }

    fn work_left(&self) -> bool {
        read_topology()
            .map(|t| !plan::plan(&t, &PlanOptions::shutdown()).steps.is_empty())
            .unwrap_or(false)
    }

    fn oldroot_still_mounted(&self) -> bool {
        read_topology()
            .map(|t| oldroot_mounted(&t))
            .unwrap_or(false)
    }

    /// Last resort for file systems that stay busy: make them read-only (no more writes can
    /// be lost), then detach them lazily so at least the mount tree is gone.
    fn force_unmounts(&mut self) {
        let Some(topo) = read_topology() else { return };
        let step_timeout = self.cfg.step_timeout.min(Duration::from_secs(5));
        for step in plan::plan(&topo, &PlanOptions::shutdown()).steps {
            // What is busy now may be what holds the data: a try even after the deadline.
            let timeout = self.deadline.cap_last_resort(step_timeout);
            let Step::Unmount { mount_point, .. } = step else {
                continue;
            };
            let mp = mount_point.clone();
            let ro = bounded(timeout, move || {
                nix::mount::mount(
                    None::<&str>,
                    mp.as_path(),
                    None::<&str>,
                    nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(io::Error::from)
            });
            let mp = mount_point.clone();
            let detach = bounded(timeout, move || {
                let flags =
                    nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
                nix::mount::umount2(mp.as_path(), flags).map_err(io::Error::from)
            });
            match (detach, ro.is_done()) {
                (Outcome::Done, true) => {
                    say!("detached busy {mount_point} lazily, after making it read-only")
                }
                (Outcome::Done, false) => {
                    say!("detached busy {mount_point} lazily (could not make it read-only: {ro})")
                }
                (other, _) => say!("could not detach {mount_point}: {other}"),
            }
        }
    }

    /// Device-mapper devices that could not be removed are suspended with their queued
    /// writes flushed, so nothing is lost in flight when the power goes, and the keys of
    /// their dm-crypt targets are wiped from kernel memory. Top-down (see
    /// [`Topology::dm_top_down`]): an LV's flush must reach the dm-crypt mapping below it
    /// before that one is suspended. Sync first: a suspended device blocks writes.
    fn secure_leftovers(&mut self) {
        let Some(topo) = read_topology() else { return };
        let leftovers: Vec<String> = topo
            .dm_top_down()
            .iter()
            .filter_map(|d| match &d.kind {
                DevKind::Dm { name, .. } if !name.is_empty() => Some(name.clone()),
                _ => None,
            })
            .collect();
        if leftovers.is_empty() {
            return;
        }
        reboot::bounded_sync(self.deadline.cap_last_resort(self.cfg.step_timeout));
        // The last safety net: run even when the deadline has passed, within its reserve.
        let step = self.cfg.step_timeout.min(deadline::RESERVE);
        for name in leftovers {
            let timeout = self.deadline.cap_last_resort(step);
            let n = name.clone();
            match bounded(timeout, move || dm::suspend(&n, true)) {
                Outcome::Done => {
                    say!("suspended {name} with its writes flushed (could not remove it)")
                }
                other => {
                    say!("could not suspend {name}: {other}");
                    continue;
                }
            }
            if self.cfg.wipe_keys {
                wipe_keys(&name, self.deadline.cap_last_resort(step));
            }
        }
    }

    /// One line an admin can grep for: what was closed, and what is left with the reason.
    fn inventory(&self) {
        let topo = read_topology();
        // Still there and still closable: a stopped MD array lingers in sysfs for a
        // moment as an empty device, which counts as closed.
        let present = |name: &str| {
            topo.as_ref()
                .and_then(|t| t.devices.get(name))
                .is_some_and(|d| d.is_closable())
        };
        let display_of = |d: &str| {
            self.initial_devices
                .iter()
                .find(|(n, _)| n == d)
                .map(|(_, display)| display.clone())
        };
        // Closed by a step of ours (its ioctl did the work), in the order they went...
        let closed: Vec<String> = self
            .progress
            .done
            .iter()
            .filter_map(|s| s.closes_device())
            .filter(|d| !present(d) && !self.progress.gone_by_kernel.contains(*d))
            .filter_map(display_of)
            .collect();
        // ...and those the kernel removed by itself: found gone at their step, or gone
        // without one (deferred removal when the last user closed them, loop autoclear).
        let mut by_kernel: Vec<String> = Vec::new();
        for (name, display) in &self.initial_devices {
            if present(name) || closed.contains(display) {
                continue;
            }
            if !self.progress.gone_by_kernel.contains(name) {
                say!("{display} ({name}) is gone: removed by the kernel when its last user closed it");
            }
            by_kernel.push(display.clone());
        }
        let mut left: Vec<String> = Vec::new();
        if let Some(topo) = &topo {
            let below = topo
                .mounts
                .iter()
                .filter(|m| plan::in_scope(&m.mount_point, OLDROOT))
                .count();
            if below > 0 {
                say!("{below} mount(s) still below {OLDROOT}");
            }
            let remaining = plan::plan(topo, &PlanOptions::shutdown());
            for step in remaining.steps.iter().filter(|s| is_device_step(s)) {
                let reason = self
                    .progress
                    .failed
                    .get(&step.describe())
                    .cloned()
                    .unwrap_or_else(|| "not attempted".into());
                let name = match step {
                    Step::RemoveDm { name, .. } => name.clone(),
                    other => other.closes_device().unwrap_or_default().to_string(),
                };
                left.push(format!("{name} ({reason})"));
            }
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        say!(
            "inventory: closed: {}; removed by the kernel: {}; left: {}",
            list(&closed),
            list(&by_kernel),
            list(&left)
        );
    }
}

/// Wipes the dm-crypt keys of the suspended device `name` in a worker, which reports
/// "ok CRYPT_TARGETS WIPED" or "error TEXT" back; says "wiped" only for what the device's
/// table shows wiped.
fn wipe_keys(name: &str, timeout: Duration) {
    let n = name.to_string();
    let (outcome, out) = worker::bounded_output(timeout, move |out| {
        use std::io::Write;
        match dm::wipe_crypt_keys(&n) {
            Ok(r) => write!(out, "ok {} {}", r.crypt_targets, r.wiped),
            Err(e) => write!(out, "error {e}"),
        }
    });
    let text = String::from_utf8_lossy(&out);
    let counts: Vec<usize> = text
        .strip_prefix("ok ")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match (outcome, counts.as_slice(), text.strip_prefix("error ")) {
        (Outcome::Done, [0, _], _) => {}
        (Outcome::Done, [targets, wiped], _) if wiped == targets => say!(
            "wiped the key of dm-crypt mapping {name} from memory (checked: its table holds no key now)"
        ),
        (Outcome::Done, [targets, wiped], _) => say!(
            "could not wipe the key of {name}: {} of its {targets} dm-crypt targets still hold one",
            targets - wiped
        ),
        (Outcome::Done, _, Some(e)) => say!("could not wipe the key of {name}: {e}"),
        (Outcome::Done, _, None) => say!("could not wipe the key of {name}: no answer"),
        (other, _, _) => say!("could not wipe the key of {name}: {other}"),
    }
}

/// The inventory file for hooks: what is still mounted below /oldroot and the steps left.
fn write_inventory_file() {
    let Some(topo) = read_topology() else { return };
    let p = plan::plan(&topo, &PlanOptions::shutdown());
    let text: String = p
        .steps
        .iter()
        .map(|s| format!("{}\n", s.describe()))
        .collect();
    let _ = std::fs::write(INVENTORY_FILE, text);
}

/// After a failed step, say who holds it: processes for a file system, holders and
/// mounts for a device.
fn name_blockers(step: &Step) {
    match step {
        Step::Unmount { mount_point, .. } => {
            let mount_points: Vec<String> = read_topology()
                .map(|t| t.mounts.iter().map(|m| m.mount_point.to_string()).collect())
                .unwrap_or_default();
            let blockers = procs::blockers(mount_point.as_lossy_str(), &mount_points);
            for b in blockers.iter().take(10) {
                say!("  {mount_point} is held by {b}");
            }
        }
        other => {
            let (Some(device), Some(topo)) = (other.closes_device(), read_topology()) else {
                return;
            };
            if let Some(d) = topo.devices.get(device) {
                for h in &d.holders {
                    let name = topo.devices.get(h).map(|x| x.display_name()).unwrap_or(h);
                    say!("  {} is held by device {name}", d.display_name());
                }
                for m in topo
                    .mounts
                    .iter()
                    .filter(|m| m.is_block_backed() && (m.major, m.minor) == (d.major, d.minor))
                {
                    say!("  {} is mounted on {}", d.display_name(), m.mount_point);
                }
            }
        }
    }
}

fn execute(step: &Step, topo: &Topology, timeout: Duration) -> Outcome {
    let number = |device: &str| -> io::Result<(u32, u32)> {
        topo.devices
            .get(device)
            .map(|d| (d.major, d.minor))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{device} vanished")))
    };
    let sys = Path::new(SYS);
    match step.clone() {
        Step::MoveOut { mount_point, to } => bounded(timeout, move || {
            std::fs::create_dir_all(&to)?;
            nix::mount::mount(
                Some(mount_point.as_path()),
                to.as_str(),
                None::<&str>,
                nix::mount::MsFlags::MS_MOVE,
                None::<&str>,
            )
            .map_err(io::Error::from)
        }),
        Step::SwapOff { path, .. } => bounded(timeout, move || swap::swapoff(Path::new(&path))),
        // UMOUNT_NOFOLLOW: a mount point that became a symlink (a process of the old
        // system can still rename and link until it is killed) must not lead elsewhere.
        Step::Unmount { mount_point, .. } => bounded(timeout, move || {
            nix::mount::umount2(mount_point.as_path(), nix::mount::MntFlags::UMOUNT_NOFOLLOW)
                .map_err(io::Error::from)
        }),
        Step::RemoveDm { name, device, .. } => match number(&device) {
            Ok(dev) => bounded_close(timeout, move || dm::close(sys, &name, &device, dev)),
            // Gone from the topology the step was planned from.
            Err(_) => Outcome::Gone,
        },
        Step::StopMd { device, .. } => match number(&device) {
            Ok(dev) => bounded(timeout, move || md::stop(&device, dev, timeout)),
            Err(e) => Outcome::Failed(e),
        },
        Step::DetachLoop { device, .. } => match number(&device) {
            Ok(dev) => bounded(timeout, move || loopdev::detach(sys, &device, dev)),
            Err(e) => Outcome::Failed(e),
        },
        Step::DisconnectNbd { device } => match number(&device) {
            Ok(dev) => bounded(timeout, move || nbd::disconnect(sys, &device, dev)),
            Err(e) => Outcome::Failed(e),
        },
    }
}

/// Logs a step's outcome; `Gone` is said by the caller, which knows the device's name.
fn log_outcome(step: &Step, outcome: &Outcome) {
    let Outcome::Done = outcome else {
        say!("could not {}: {outcome}", step.describe());
        return;
    };
    say!("{}", step.describe_done());
}

/// `exitrd.break=shell`: a shell on the console before the final reboot, bounded so an
/// unattended machine still powers off.
fn break_shell(limit: Duration) {
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
    let Ok(mut child) = hooks::with_default_signals(&mut std::process::Command::new(shell)).spawn()
    else {
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
    use crate::topology::mountinfo::MountPath;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn systemd_argv_as_seen_in_a_trixie_vm() {
        let a = parse_args(&strings(&[
            "poweroff",
            "--timeout=90000000us",
            "--log-level",
            "info",
            "--log-target=kmsg",
            "--log-color",
            "--exit-code=0",
        ]));
        assert_eq!(a.verb, Some(Verb::PowerOff));
        assert_eq!(a.timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn unknown_verb_and_missing_options() {
        let a = parse_args(&strings(&["sing", "--future-option=1"]));
        assert_eq!(a.verb, None);
        assert_eq!(a.verb_word, "sing");
        assert_eq!(a.timeout, None);
        assert_eq!(parse_args(&[]).verb, None);
    }

    #[test]
    fn budget_stays_inside_systemds_timeout() {
        let cfg = Config::default();
        assert_eq!(budget(&cfg, None), Duration::from_secs(60));
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(90))),
            Duration::from_secs(60)
        );
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(30))),
            Duration::from_secs(25)
        );
        assert_eq!(
            budget(&cfg, Some(Duration::from_secs(2))),
            Duration::from_secs(60)
        );
        let short = Config {
            timeout: Duration::from_secs(20),
            ..Config::default()
        };
        assert_eq!(
            budget(&short, Some(Duration::from_secs(90))),
            Duration::from_secs(20)
        );
    }

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

    /// A mount point replaced by a symlink to another mount point: the unmount step must
    /// not follow it and unmount the other file system.
    #[test]
    #[ignore = "needs root: mounts a tmpfs"]
    fn unmount_does_not_follow_a_symlink() {
        let dir = std::env::temp_dir().join(format!("exitrd-nofollow-{}", std::process::id()));
        let target = dir.join("mounted");
        let link = dir.join("link");
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let step = Step::Unmount {
            mount_point: MountPath::from_bytes(link.as_os_str().as_encoded_bytes().to_vec()),
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            device: None,
        };
        let outcome = execute(&step, &Topology::default(), Duration::from_secs(5));
        let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*target.to_string_lossy());
        if still_mounted {
            let _ = nix::mount::umount(&target);
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!outcome.is_done(), "the symlink was followed: {outcome}");
        assert!(
            still_mounted,
            "the file system behind the symlink was unmounted"
        );
    }

    #[test]
    fn fault_switches() {
        assert_eq!(faults("root=/dev/vda quiet"), Faults::default());
        let f = faults("exitrd.fault=panic exitrd.fault=verb:sing");
        assert!(f.panic);
        assert!(!f.abort);
        assert!(faults("exitrd.fault=abort").abort);
        assert_eq!(f.verb.as_deref(), Some("sing"));
    }
}
