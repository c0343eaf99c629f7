//! The shutdown runtime: PID 1 inside systemd's exitrd pivot, old root at `/oldroot`.
//!
//! Order: sync; `start` hooks; end the processes still alive (sparing `@` processes that
//! may serve the storage); swapoff and unmount everything below `/oldroot`; `unmounted`
//! hooks; close the devices top-down; end the spared processes and retry what is left;
//! make busy file systems read-only and detach them; suspend DM devices that stay and wipe
//! dm-crypt keys; `final` hooks; inventory; the break shell if asked for; sync;
//! `reboot(2)`.
//!
//! Every blocking operation runs bounded (see [`worker`]), the whole run is bounded by one
//! deadline, the watchdog is fed throughout, and every path, panics included, ends in
//! [`reboot::finish`].
//!
//! This module holds that sequence. What the run is told is read in `arguments`; each step
//! runs, and its outcome is logged, in `execute`; the inventory is said in `report`; a
//! panic or fatal signal ends in reboot through `fatal`.

mod arguments;
pub mod deadline;
mod execute;
mod fatal;
pub mod hooks;
pub mod log;
pub mod procs;
pub mod reboot;
mod record;
pub mod release;
mod report;
pub mod schedule;
pub mod watchdog;
pub mod worker;

use crate::config::Config;
use crate::plan::{self, PlanOptions, Step};
use crate::teardown::dm;
use crate::topology::block::DevKind;
use crate::topology::Topology;
use crate::{debug, say};
use arguments::Faults;
use deadline::Deadline;
use reboot::Verb;
use schedule::{Limits, Progress};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use worker::{bounded, Outcome};

const OLDROOT: &str = "/oldroot";
/// The payload's hooks, at the root of the exitrd tmpfs where the payload lives after the
/// pivot.
const HOOKS_DIR: &str = "/hooks";

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

/// Entry point of shutdown mode. Never returns.
pub fn run(args: &[String]) -> ! {
    let started = Instant::now();
    // Before anything that could fail: from here on every failure ends in reboot(2).
    fatal::install();
    let mut parsed = arguments::parse_args(args);
    fatal::remember_verb(parsed.verb.unwrap_or(Verb::Reboot));
    reset_signals();
    ensure_api_mounts();
    // The binary lives in a tmpfs that can be swapped out, perhaps to a swap device about
    // to be torn down: keep every page of ours in RAM, now and later.
    let locked = nix::sys::mman::mlockall(
        nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    log::init(cmdline.split_whitespace().any(|w| w == "exitrd.debug"));
    let faults = arguments::test_faults(&cmdline);
    if let Some(word) = &faults.verb {
        say!("test fault: acting as if systemd passed the verb {word:?}");
        parsed.verb = Verb::parse(word);
        parsed.verb_word = word.clone();
    }
    let verb = parsed.verb.unwrap_or(Verb::Reboot);
    fatal::remember_verb(verb);
    reboot::remember_param();
    let cfg = arguments::load_config(&cmdline);
    log::init(cfg.debug);
    let budget = arguments::budget(&cfg, parsed.timeout);
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
        record_places: None,
    };
    shutdown.teardown();
    shutdown.run_hooks("final");
    let inventory = report::inventory(&shutdown.initial_devices, &shutdown.progress);
    shutdown.write_record(&inventory, started.elapsed());
    if shutdown.cfg.break_shell {
        // Not cut to the deadline: asked for on purpose, with its own bound.
        hooks::break_shell(shutdown.cfg.shell_timeout);
    }
    if let Some(topo) = read_topology() {
        release::release(
            &topo,
            shutdown.deadline.cap_last_resort(Duration::from_secs(2)),
        );
    }
    say!("finished in {:.1}s", started.elapsed().as_secs_f64());
    let synced = reboot::bounded_sync(
        shutdown
            .deadline
            .cap_last_resort(reboot::FINAL_SYNC_TIMEOUT),
    );
    if !synced {
        // Writes still wait on a device: an iSCSI target that stopped answering would
        // hold the kernel's power-off too (sd flushes each disk's cache on the way down).
        execute::drop_iscsi_sessions(|| shutdown.deadline.cap_last_resort(ISCSI_DROP_TIMEOUT));
    }
    reboot::power(verb)
}

/// How long dropping one iSCSI session at the very end may take.
const ISCSI_DROP_TIMEOUT: Duration = Duration::from_secs(3);

/// The test fault `exitrd.fault=hang`: PID 1 wedged after unmounting, as if stuck for good.
/// Only the hardware watchdog may end this, and the VM test proves that it does: so
/// nothing here may feed it, and nothing may lead on to `reboot(2)`. Feeding stops for
/// good; every signal is blocked, since a signal delivered to one of the fatal-signal
/// handlers (a leftover process's `kill -ABRT 1`) would end in `reboot(2)`; and sleep,
/// unlike [`watchdog::sleep`], does not feed. No thread of ours runs meanwhile (the
/// runtime has none) and forked workers never feed.
fn wedge() -> ! {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    watchdog::stop_feeding();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    say!("test fault exitrd.fault=hang: hanging for good after unmounting, no longer feeding the watchdog; only its reset can end this");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
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
    /// Where the shutdown record may go, learned before the teardown; `None` when there
    /// was no teardown (no pivot) or the record is turned off.
    record_places: Option<Vec<record::Candidate>>,
}

fn read_topology() -> Option<Topology> {
    match Topology::read(Path::new("/")) {
        Ok(mut t) => {
            for w in &t.warnings {
                debug!("warning: {w}");
            }
            mark_unreachable_loop_files(&mut t);
            Some(t)
        }
        Err(e) => {
            say!("cannot read the mount table: {e}");
            None
        }
    }
}

/// How long looking for one loop device's backing file may take.
const LOOP_FILE_LOOK: Duration = Duration::from_millis(500);

/// Marks the loop devices whose recorded backing file is not there (see
/// [`Topology::unreachable_loop_files`]): seen in live-net, where live-boot's `fetch=`
/// put the squashfs on a ramfs that systemd-shutdown detached, and its recorded path
/// `/live/filesystem.squashfs` led onto the old root's overlay, which then was taken
/// for the file's holder. Each device and path is looked at once, in a bounded worker (a
/// stat on a file system whose server is gone would not return); a look that times out
/// counts as found, which is how paths were taken before.
fn mark_unreachable_loop_files(topo: &mut Topology) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static SEEN: Mutex<BTreeMap<(String, String), bool>> = Mutex::new(BTreeMap::new());
    for d in topo.devices.values() {
        let DevKind::Loop {
            backing_file: Some(file),
        } = &d.kind
        else {
            continue;
        };
        let key = (d.name.clone(), file.clone());
        let known = SEEN.lock().ok().and_then(|seen| seen.get(&key).copied());
        let found = known.unwrap_or_else(|| {
            let f = file.clone();
            let outcome = bounded(LOOP_FILE_LOOK, move || {
                if crate::topology::backing_file_found(Path::new("/"), OLDROOT, &f) {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(nix::libc::ENOENT))
                }
            });
            let found = !matches!(outcome, Outcome::Failed(_));
            if !found {
                debug!(
                    "{}'s backing file {file} is not where its path leads (its file system \
                     was detached): no mount holds it",
                    d.name
                );
            }
            if let Ok(mut seen) = SEEN.lock() {
                seen.insert(key, found);
            }
            found
        });
        if !found {
            topo.unreachable_loop_files.insert(d.name.clone());
        }
    }
}

fn oldroot_mounted(topo: &Topology) -> bool {
    topo.mounts.iter().any(|m| m.mount_point == OLDROOT)
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
            &mut execute::Real {
                deadline: &self.deadline,
                initial_devices: &self.initial_devices,
            },
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
        report::write_inventory_file();
        // Hooks get a try even late: the final ones may matter most.
        let timeout = self.deadline.cap_last_resort(self.cfg.step_timeout);
        hooks::run_stage(
            Path::new(HOOKS_DIR),
            stage,
            self.verb.as_str(),
            Path::new(report::INVENTORY_FILE),
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
        if self.cfg.record {
            self.record_places = Some(record::learn(&self.deadline, self.cfg.step_timeout));
        }
        self.run_hooks("start");
        procs::end_processes(true, self.deadline.cap(self.cfg.kill_grace));

        self.passes(&|s: &Step| !is_device_step(s));
        if self.faults.panic {
            panic!("test fault exitrd.fault=panic after unmounting");
        }
        if self.faults.hang {
            wedge();
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

    /// Writes the shutdown record (see [`record`]), or says why not.
    fn write_record(&self, inventory: &report::Inventory, elapsed: Duration) {
        if !self.cfg.record {
            say!("no shutdown record: turned off (RECORD=no in /etc/exitrd.conf)");
            return;
        }
        let Some(places) = &self.record_places else {
            return;
        };
        let mut subjects: Vec<String> = inventory.left.iter().map(|(d, _)| d.clone()).collect();
        subjects.extend(inventory.mount_points_left.iter().cloned());
        let rec = record::make(
            self.verb.as_str(),
            elapsed,
            inventory,
            execute::blockers_of(&subjects),
            self.progress.out_of_time || self.deadline.passed(),
        );
        let torn_down: Vec<String> = self
            .initial_devices
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        record::write(
            places,
            &rec,
            &torn_down,
            &self.deadline,
            self.cfg.step_timeout,
        );
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
                // Gone meanwhile: deferred removal as its last user let go (a timed-out
                // unmount that finished in the background).
                Outcome::Failed(e) if worker::errno(&e) == Some(nix::libc::ENXIO) => {
                    say!("{name} is gone: removed by the kernel when its last user closed it");
                    continue;
                }
                other => {
                    say!("could not suspend {name}: {other}");
                    continue;
                }
            }
            if self.cfg.wipe_keys {
                execute::wipe_keys(&name, self.deadline.cap_last_resort(step));
            }
        }
    }
}
