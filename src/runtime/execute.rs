//! Running one step: the bounded call for each kind of step, what its outcome says in the
//! log, and who holds what could not be closed.

use super::deadline::Deadline;
use super::report::{display_name, say_gone};
use super::schedule::Executor;
use super::worker::{self, bounded, bounded_close, bounded_patient, Outcome, Patience};
use super::{procs, read_topology, watchdog};
use crate::plan::Step;
use crate::say;
use crate::teardown::{dm, iscsi, loopdev, md, nbd, swap, Closed};
use crate::topology::Topology;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Where sysfs is mounted.
const SYS: &str = "/sys";

/// The real machine, for the scheduler.
pub struct Real<'a> {
    pub deadline: &'a Deadline,
    /// See `Shutdown::initial_devices`.
    pub initial_devices: &'a [(String, String)],
}

impl Executor for Real<'_> {
    fn read(&mut self) -> Option<Topology> {
        read_topology()
    }

    fn run(&mut self, step: &Step, topo: &Topology, timeout: Duration) -> Outcome {
        // Work the kernel is still doing may go on past the step's time, up to the
        // deadline (see worker::Patience).
        execute(step, topo, timeout, timeout.max(self.deadline.left()))
    }

    fn elapsed(&self) -> Duration {
        self.deadline.elapsed()
    }

    fn pause(&mut self, d: Duration) {
        watchdog::sleep(d);
    }

    fn report(&mut self, step: &Step, outcome: &Outcome) {
        // Only a step that closes a device can find it gone.
        if let (Outcome::Gone, Some(device)) = (outcome, step.closes_device()) {
            // Its name may have left sysfs with it: say the one it had at the start.
            say_gone(display_name(self.initial_devices, device), device);
        } else {
            log_outcome(step, outcome);
        }
        if !outcome.is_done() {
            name_blockers(step);
        }
    }
}

fn execute(step: &Step, topo: &Topology, timeout: Duration, limit: Duration) -> Outcome {
    let patience = || Patience {
        stalled: timeout,
        limit,
        doing: Some(step.describe()),
    };
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
        Step::SwapOff { path, .. } => bounded_patient(patience(), move || {
            swap::swapoff(Path::new(&path)).map(|()| Closed::Done)
        }),
        // UMOUNT_NOFOLLOW: a mount point that became a symlink (a process of the old
        // system can still rename and link until it is killed) must not lead elsewhere.
        Step::Unmount { mount_point, .. } => bounded_patient(patience(), move || {
            nix::mount::umount2(mount_point.as_path(), nix::mount::MntFlags::UMOUNT_NOFOLLOW)
                .map(|()| Closed::Done)
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
        Step::LogoutIscsi {
            device,
            other_disks,
            session,
            ..
        } => {
            // The session's disks still there (the logout removes them all); with none
            // left, the session went before the step (a logout by someone else).
            let disks: Vec<(String, (u32, u32))> = std::iter::once(device)
                .chain(other_disks)
                .filter_map(|d| number(&d).ok().map(|n| (d, n)))
                .collect();
            if disks.is_empty() {
                return Outcome::Gone;
            }
            bounded_close(timeout, move || {
                iscsi::logout(Path::new("/"), session, &disks, timeout)
            })
        }
    }
}

/// The last sync timed out, and writes still wait on a device: ends every iSCSI session
/// left without a logout (`teardown::iscsi::drop_session`), so that neither those writes
/// nor sd's cache flush at power-off wait on a target that no longer answers.
pub fn drop_iscsi_sessions(timeout: impl Fn() -> Duration) {
    let Some(topo) = super::read_topology() else {
        return;
    };
    for step in crate::plan::iscsi_sessions(&topo) {
        let Step::LogoutIscsi { session, .. } = step else {
            continue;
        };
        let limit = timeout();
        let why = "writes still wait on it after the last sync, and the power-off would wait \
                   on its target too";
        match bounded_close(limit, move || {
            iscsi::drop_session(Path::new("/"), session, why, limit)
        }) {
            Outcome::Dropped(why) => say!("{}", step.describe_dropped(&why)),
            Outcome::Done | Outcome::Gone => {}
            other => say!("could not drop iSCSI session {session}: {other}"),
        }
    }
}

/// Logs a step's outcome; `Gone` is said by the caller, which knows the device's name.
fn log_outcome(step: &Step, outcome: &Outcome) {
    match outcome {
        Outcome::Done => say!("{}", step.describe_done()),
        Outcome::Dropped(why) => say!("{}", step.describe_dropped(why)),
        other => say!("could not {}: {other}", step.describe()),
    }
}

/// What the log said held what (subject: a mount point or a device's name; the line),
/// for the shutdown record.
static BLOCKERS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_blocker(subject: &str, line: String) {
    if let Ok(mut v) = BLOCKERS.lock() {
        if v.len() < 64 && !v.iter().any(|(_, l)| *l == line) {
            v.push((subject.to_string(), line));
        }
    }
}

/// The lines about what held `subjects` (mount points or device names), as logged.
pub fn blockers_of(subjects: &[String]) -> Vec<String> {
    BLOCKERS
        .lock()
        .map(|v| {
            v.iter()
                .filter(|(s, _)| subjects.contains(s))
                .map(|(_, l)| l.clone())
                .collect()
        })
        .unwrap_or_default()
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
                remember_blocker(
                    mount_point.as_lossy_str(),
                    format!("{mount_point} is held by {b}"),
                );
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
                    remember_blocker(
                        d.display_name(),
                        format!("{} is held by device {name}", d.display_name()),
                    );
                }
                for m in topo
                    .mounts
                    .iter()
                    .filter(|m| m.is_block_backed() && (m.major, m.minor) == (d.major, d.minor))
                {
                    say!("  {} is mounted on {}", d.display_name(), m.mount_point);
                    remember_blocker(
                        d.display_name(),
                        format!("{} is mounted on {}", d.display_name(), m.mount_point),
                    );
                }
            }
        }
    }
}

/// Wipes the dm-crypt keys of the suspended device `name` in a worker, which reports
/// "ok CRYPT_TARGETS WIPED" or "error TEXT" back; says "wiped" only for what the device's
/// table shows wiped.
pub fn wipe_keys(name: &str, timeout: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::mountinfo::MountPath;

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
        let outcome = execute(
            &step,
            &Topology::default(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
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
}
