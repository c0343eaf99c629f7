//! The shutdown runtime: PID 1 inside systemd's exitrd pivot, old root at `/oldroot`.
//!
//! Order: sync; end the processes still holding the old root (sparing `@` processes that
//! may serve it); swapoff and unmount everything below `/oldroot` deepest first; close the
//! devices top-down; end the spared processes and try what is left once more; log an
//! inventory; sync; `reboot(2)`. Every blocking operation runs bounded (see [`worker`]), the
//! whole run is bounded by one deadline, and every path ends in [`reboot::finish`].

pub mod log;
pub mod procs;
pub mod reboot;
pub mod worker;

use crate::plan::{self, PlanOptions, Step};
use crate::teardown::{devnode, dm, loopdev, md, swap};
use crate::topology::block::{DevKind, DmKind};
use crate::topology::Topology;
use crate::{debug, say};
use reboot::Verb;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use worker::{bounded, Outcome};

const OLDROOT: &str = "/oldroot";
/// Whole-run bound when systemd gives none; systemd's own default is 90 s.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// One operation (an unmount, an ioctl) gets at most this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Kept for the final sync and reboot call after the deadline.
const FINAL_RESERVE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub verb: Option<Verb>,
    pub verb_word: String,
    pub timeout: Option<Duration>,
}

/// Parses a systemd time span as systemd-shutdown passes it (`90000000us`, `90s`, `1min`).
pub fn parse_timespan(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "us" | "usec" => Some(Duration::from_micros(n)),
        "ms" | "msec" => Some(Duration::from_millis(n)),
        "" | "s" | "sec" => Some(Duration::from_secs(n)),
        "min" | "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// argv after the program name: the verb, then systemd's options. Unknown options are
/// ignored so a newer systemd never breaks a shutdown.
pub fn parse_args(args: &[String]) -> Args {
    let verb_word = args.first().cloned().unwrap_or_default();
    let timeout = args
        .iter()
        .skip(1)
        .filter_map(|a| a.strip_prefix("--timeout="))
        .find_map(parse_timespan);
    Args {
        verb: Verb::parse(&verb_word),
        verb_word,
        timeout,
    }
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
        say!("internal error: {info}; finishing the shutdown");
        reboot::finish(verb_from_code(VERB_FOR_PANIC.load(Ordering::Relaxed)))
    }));
}

fn kernel_cmdline_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == word))
        .unwrap_or(false)
}

/// What happened to each device, for the final inventory.
#[derive(Default)]
struct Report {
    closed: Vec<String>,
    failed: BTreeMap<String, String>,
}

struct Run {
    deadline: Instant,
    report: Report,
}

impl Run {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn step_timeout(&self) -> Option<Duration> {
        let left = self.remaining();
        (!left.is_zero()).then(|| left.min(STEP_TIMEOUT))
    }
}

/// Entry point of shutdown mode. Never returns.
pub fn run(args: &[String]) -> ! {
    let parsed = parse_args(args);
    let verb = parsed.verb.unwrap_or(Verb::Reboot);
    VERB_FOR_PANIC.store(verb_code(verb), Ordering::Relaxed);
    install_panic_hook();
    log::init(kernel_cmdline_has("exitrd.debug"));
    let started = Instant::now();
    // systemd's --timeout is its own bound for the whole shutdown; stay inside it.
    let budget = parsed
        .timeout
        .map(|t| t.saturating_sub(FINAL_RESERVE).min(DEFAULT_DEADLINE))
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_DEADLINE);
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
    let mut run = Run {
        deadline: started + budget,
        report: Report::default(),
    };
    teardown(&mut run);
    inventory(&run);
    say!("finished in {:.1}s", started.elapsed().as_secs_f64());
    reboot::finish(verb)
}

fn is_mount_point(path: &str, topo: &Topology) -> bool {
    topo.mounts.iter().any(|m| m.mount_point == path)
}

fn read_topology() -> Option<Topology> {
    match Topology::read(Path::new("/")) {
        Ok(t) => {
            for w in &t.warnings {
                say!("warning: {w}");
            }
            Some(t)
        }
        Err(e) => {
            say!("cannot read the mount table: {e}");
            None
        }
    }
}

fn teardown(run: &mut Run) {
    reboot::bounded_sync(STEP_TIMEOUT);
    let Some(topo) = read_topology() else { return };
    if !is_mount_point(OLDROOT, &topo) {
        say!("{OLDROOT} is not mounted: not started by systemd's pivot, nothing to take down");
        return;
    }
    procs::end_processes(true, Duration::from_secs(3));

    let mut unmounted = unmount_pass(run);
    let left = procs::list(Path::new("/proc"));
    if !unmounted && !left.is_empty() {
        // Processes spared so far (argv[0] '@') are the likely holders.
        procs::end_processes(false, Duration::from_secs(3));
        unmounted = unmount_pass(run);
    }
    if !unmounted {
        force_unmounts(run);
    }
    close_devices(run);
    let spared = procs::list(Path::new("/proc"));
    if !spared.is_empty() {
        procs::end_processes(false, Duration::from_secs(2));
        unmount_pass(run);
        close_devices(run);
    }
    secure_leftovers(run);
}

/// Device-mapper devices that could not be removed are suspended with their queued writes
/// flushed, so nothing is lost in flight when the power goes, and dm-crypt ones get their
/// key wiped from kernel memory. Sync first: a suspended device blocks later writes.
fn secure_leftovers(run: &mut Run) {
    let Some(topo) = read_topology() else { return };
    let leftovers: Vec<(String, DmKind)> = topo
        .devices
        .values()
        .filter_map(|d| match &d.kind {
            DevKind::Dm { name, kind, .. } => Some((name.clone(), *kind)),
            _ => None,
        })
        .collect();
    if leftovers.is_empty() {
        return;
    }
    reboot::bounded_sync(STEP_TIMEOUT.min(run.remaining().max(Duration::from_secs(1))));
    for (name, kind) in leftovers {
        // Suspending is the last safety net, so it may use the final reserve.
        let timeout = run.remaining().max(FINAL_RESERVE).min(STEP_TIMEOUT);
        let n = name.clone();
        match bounded(timeout, move || dm::suspend(&n, true)) {
            Outcome::Done => say!("suspended {name} with its writes flushed (could not remove it)"),
            other => {
                say!("could not suspend {name}: {other}");
                continue;
            }
        }
        if kind == DmKind::Crypt {
            let n = name.clone();
            match bounded(timeout, move || dm::message(&n, 0, "key wipe")) {
                Outcome::Done => say!("wiped the key of dm-crypt mapping {name}"),
                other => say!("could not wipe the key of {name}: {other}"),
            }
        }
    }
}

/// Swapoff and unmount, re-reading the mount table after every pass because unmounting
/// one file system can reveal or free another. Returns whether `/oldroot` is gone.
fn unmount_pass(run: &mut Run) -> bool {
    for _ in 0..8 {
        let Some(topo) = read_topology() else {
            return false;
        };
        if !is_mount_point(OLDROOT, &topo) {
            return true;
        }
        let p = plan::plan(&topo, &PlanOptions::shutdown());
        let mut progress = false;
        for step in p.steps.iter().filter(|s| s.closes_device().is_none()) {
            let Some(timeout) = run.step_timeout() else {
                say!("deadline reached: skipping the remaining unmounts");
                return false;
            };
            let outcome = execute(step, &topo, timeout);
            log_outcome(step, &outcome);
            progress |= outcome.is_done();
        }
        if !progress {
            return false;
        }
    }
    false
}

/// Last resort for file systems that stay busy: make them read-only (no more writes can be
/// lost), then detach them lazily so at least the mount tree is gone.
fn force_unmounts(run: &mut Run) {
    let Some(topo) = read_topology() else { return };
    let p = plan::plan(&topo, &PlanOptions::shutdown());
    for step in &p.steps {
        let Step::Unmount { mount_point, .. } = step else {
            continue;
        };
        let Some(timeout) = run.step_timeout() else {
            return;
        };
        let mp = mount_point.clone();
        let ro = bounded(timeout, move || {
            nix::mount::mount(
                None::<&str>,
                mp.as_str(),
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(io::Error::from)
        });
        debug!("remount read-only {mount_point}: {ro}");
        let mp = mount_point.clone();
        let detach = bounded(timeout, move || {
            nix::mount::umount2(mp.as_str(), nix::mount::MntFlags::MNT_DETACH)
                .map_err(io::Error::from)
        });
        match detach {
            Outcome::Done => say!(
                "detached busy {mount_point} lazily (read-only: {})",
                ro.is_done()
            ),
            other => say!("could not detach {mount_point}: {other}"),
        }
    }
}

/// Closes devices top-down, re-planning after every pass.
fn close_devices(run: &mut Run) {
    for _ in 0..8 {
        let Some(topo) = read_topology() else { return };
        let p = plan::plan(&topo, &PlanOptions::shutdown());
        let steps: Vec<&Step> = p
            .steps
            .iter()
            .filter(|s| s.closes_device().is_some())
            .collect();
        if steps.is_empty() {
            return;
        }
        let mut progress = false;
        for step in steps {
            let Some(timeout) = run.step_timeout() else {
                say!("deadline reached: skipping the remaining devices");
                return;
            };
            let outcome = execute(step, &topo, timeout);
            log_outcome(step, &outcome);
            let device = step.closes_device().unwrap_or_default().to_string();
            let name = step_display_name(step);
            match outcome {
                Outcome::Done => {
                    run.report.failed.remove(&device);
                    run.report.closed.push(name);
                    progress = true;
                }
                other => {
                    run.report.failed.insert(device, other.to_string());
                }
            }
        }
        if !progress {
            return;
        }
    }
}

fn step_display_name(step: &Step) -> String {
    match step {
        Step::RemoveDm { name, .. } => name.clone(),
        Step::StopMd { device, .. } | Step::DetachLoop { device, .. } => device.clone(),
        Step::SwapOff { path, .. } => path.clone(),
        Step::Unmount { mount_point, .. } => mount_point.clone(),
    }
}

fn execute(step: &Step, topo: &Topology, timeout: Duration) -> Outcome {
    let node = |device: &str| -> io::Result<std::path::PathBuf> {
        let d = topo
            .devices
            .get(device)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{device} vanished")))?;
        devnode::node_for(&d.name, d.major, d.minor)
    };
    match step.clone() {
        Step::SwapOff { path, .. } => bounded(timeout, move || swap::swapoff(Path::new(&path))),
        Step::Unmount { mount_point, .. } => bounded(timeout, move || {
            nix::mount::umount2(mount_point.as_str(), nix::mount::MntFlags::empty())
                .map_err(io::Error::from)
        }),
        Step::RemoveDm { name, .. } => bounded(timeout, move || dm::remove(&name)),
        Step::StopMd { device, .. } => match node(&device) {
            Ok(path) => bounded(timeout, move || md::stop_array(&path)),
            Err(e) => Outcome::Failed(e),
        },
        Step::DetachLoop { device, .. } => match node(&device) {
            Ok(path) => bounded(timeout, move || loopdev::clear_fd(&path)),
            Err(e) => Outcome::Failed(e),
        },
    }
}

fn log_outcome(step: &Step, outcome: &Outcome) {
    let Outcome::Done = outcome else {
        say!("could not {}: {outcome}", step.describe());
        return;
    };
    match step {
        Step::SwapOff { path, .. } => say!("swapoff {path}"),
        Step::Unmount {
            mount_point,
            fstype,
            source,
            ..
        } => say!("unmounted {mount_point} ({fstype} on {source})"),
        Step::RemoveDm { device, name, kind } => match kind {
            DmKind::Crypt => {
                say!("closed dm-crypt mapping {name} ({device}): key wiped from memory")
            }
            DmKind::Lvm => say!("removed LVM volume {name} ({device})"),
            DmKind::Other => say!("removed device-mapper device {name} ({device})"),
        },
        Step::StopMd { device, level } => say!("stopped MD array {device} ({level})"),
        Step::DetachLoop {
            device,
            backing_file,
        } => say!("detached loop device {device} from {backing_file}"),
    }
}

/// One line an admin can grep for: what was closed, and what is left with the reason.
fn inventory(run: &Run) {
    let mut left: Vec<String> = Vec::new();
    if let Some(topo) = read_topology() {
        let oldroot_mounts = topo
            .mounts
            .iter()
            .filter(|m| plan::in_scope(&m.mount_point, OLDROOT))
            .count();
        if oldroot_mounts > 0 {
            say!("{oldroot_mounts} mount(s) still below {OLDROOT}");
        }
        for d in topo.devices.values().filter(|d| d.is_closable()) {
            let reason = run
                .report
                .failed
                .get(&d.name)
                .cloned()
                .unwrap_or_else(|| "not attempted".into());
            left.push(format!("{} ({reason})", d.display_name()));
        }
    }
    let closed = if run.report.closed.is_empty() {
        "none".to_string()
    } else {
        run.report.closed.join(", ")
    };
    let left = if left.is_empty() {
        "none".to_string()
    } else {
        left.join(", ")
    };
    say!("inventory: closed: {closed}; left: {left}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timespans() {
        assert_eq!(parse_timespan("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timespan("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timespan("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timespan("xs"), None);
        assert_eq!(parse_timespan("5 parsecs"), None);
    }
}
