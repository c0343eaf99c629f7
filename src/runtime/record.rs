//! The shutdown record (see [`crate::record`]): where it may go is learned before the
//! teardown, from the old root's fstab and the mount table; at the end of the run it is
//! written to a plain `/boot` (ext2/3/4) or the ESP (vfat), mounted on a directory of
//! exitrd's own tmpfs and unmounted again.
//!
//! Every blocking act (reading the old root's fstab, mount, write and fsync, unmount)
//! runs in a worker bounded by the step timeout and the run's deadline; a device that is,
//! or sits on, a device of the stack, or that this shutdown took down, is refused, so
//! nothing is ever written to a file system of the closed stack.

use super::deadline::Deadline;
use super::report::Inventory;
use super::worker::{bounded, bounded_output, Outcome};
use super::{read_topology, OLDROOT};
use crate::record::{self, FstabPlace, Left, Record};
use crate::say;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Where the chosen file system is mounted, in exitrd's own tmpfs.
const MOUNT_DIR: &str = "/.exitrd-record";
/// The most any one act of the record may take.
const ACT_TIMEOUT: Duration = Duration::from_secs(5);

/// A file system that may hold the record, learned before the teardown.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `/boot` or `/boot/efi` of the old root.
    pub mount_point: String,
    /// Kernel name (`vda2`).
    pub device: String,
    pub fstype: String,
}

/// The old root's `/boot` and `/boot/efi`: from the mount table if still mounted, else
/// from its fstab, read in a worker (the old root may sit on a stalled device).
pub fn learn(deadline: &Deadline, step_timeout: Duration) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    if let Some(topo) = read_topology() {
        for m in &topo.mounts {
            let mp = m.mount_point.as_lossy_str();
            let Some(rel) = mp.strip_prefix(OLDROOT) else {
                continue;
            };
            if !matches!(rel, "/boot" | "/boot/efi") || !record::supported_fstype(&m.fstype) {
                continue;
            }
            if let Some(d) = topo.device_by_number(m.major, m.minor) {
                out.push(Candidate {
                    mount_point: rel.to_string(),
                    device: d.name.clone(),
                    fstype: m.fstype.clone(),
                });
            }
        }
    }
    let fstab = format!("{OLDROOT}/etc/fstab");
    let (outcome, text) = bounded_output(deadline.cap(step_timeout.min(ACT_TIMEOUT)), |w| {
        use std::io::{Read, Write};
        let mut buf = Vec::new();
        std::fs::File::open(&fstab)?
            .take(1 << 20)
            .read_to_end(&mut buf)?;
        w.write_all(&buf)
    });
    if !outcome.is_done() {
        say!("shutdown record: cannot read {fstab}: {outcome}");
    }
    for FstabPlace {
        spec,
        mount_point,
        fstype,
    } in record::fstab_places(&String::from_utf8_lossy(&text))
    {
        if out.iter().any(|c| c.mount_point == mount_point) {
            continue;
        }
        match record::resolve_spec(Path::new("/"), &spec) {
            Some(device) => out.push(Candidate {
                mount_point,
                device,
                fstype,
            }),
            None => say!("shutdown record: {mount_point} ({spec}): no such device"),
        }
    }
    // ext4 before vfat: a journal, and no dirty bit left by an unmount cut short.
    out.sort_by_key(|c| c.fstype == "vfat");
    out
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The record of this run.
pub fn make(
    verb: &str,
    duration: Duration,
    inv: &Inventory,
    held_by: Vec<String>,
    deadline_reached: bool,
) -> Record {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Record {
        format: record::FORMAT,
        exitrd_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: boot_id(),
        time,
        time_utc: record::utc_string(time),
        verb: verb.to_string(),
        duration_ms: duration.as_millis().try_into().unwrap_or(u64::MAX),
        clean: inv.left.is_empty() && inv.mounts_left == 0,
        closed_by_exitrd: inv.closed.clone(),
        closed_by_kernel: inv.by_kernel.clone(),
        left: inv
            .left
            .iter()
            .map(|(device, reason)| Left {
                device: device.clone(),
                reason: reason.clone(),
            })
            .collect(),
        mounts_left: inv.mounts_left,
        held_by,
        deadline_reached,
    }
}

/// Why `c` cannot take the record now, after the teardown, if it cannot.
fn refusal(c: &Candidate, torn_down: &[String]) -> Option<String> {
    let Some(topo) = read_topology() else {
        return Some("cannot read the mount table".into());
    };
    if let Some(why) = record::refuse_reason(&topo.devices, &c.device, torn_down) {
        return Some(why);
    }
    let dev = topo.devices.get(&c.device)?;
    if let Some(m) = topo
        .mounts
        .iter()
        .find(|m| m.is_block_backed() && (m.major, m.minor) == (dev.major, dev.minor))
    {
        return Some(format!(
            "{} is still mounted on {}",
            c.device, m.mount_point
        ));
    }
    if !Path::new("/dev").join(&c.device).exists() {
        return Some(format!("/dev/{} is missing", c.device));
    }
    None
}

/// Writes `rec` to the first candidate that may take it; one line says where, or why
/// not. `torn_down`: kernel names of the devices this shutdown closed or meant to.
pub fn write(
    candidates: &[Candidate],
    rec: &Record,
    torn_down: &[String],
    deadline: &Deadline,
    step_timeout: Duration,
) {
    if candidates.is_empty() {
        say!("no shutdown record: the old root's fstab names no /boot or /boot/efi (ext2/3/4 or vfat)");
        return;
    }
    let mut refused: Vec<String> = Vec::new();
    for c in candidates {
        if let Some(why) = refusal(c, torn_down) {
            refused.push(format!(
                "{} ({} on {}): {why}",
                c.mount_point, c.fstype, c.device
            ));
            continue;
        }
        let act = step_timeout.min(ACT_TIMEOUT);
        if deadline.cap(act) < Duration::from_millis(200) {
            say!(
                "no shutdown record: the deadline has passed (it would go to {} on {})",
                c.mount_point,
                c.device
            );
            return;
        }
        match write_to(c, rec, deadline, act, Path::new(MOUNT_DIR)) {
            Ok(()) => {
                say!(
                    "wrote the shutdown record to {} ({} on {})",
                    c.mount_point,
                    c.fstype,
                    c.device
                );
                return;
            }
            // The next place, if there is one and time for it.
            Err(e) => say!(
                "could not write the shutdown record to {} ({} on {}): {e}",
                c.mount_point,
                c.fstype,
                c.device
            ),
        }
    }
    if !refused.is_empty() {
        say!("no shutdown record: {}", refused.join("; "));
    }
}

/// Mounts `c` on `dir`, writes the record, unmounts it.
fn write_to(
    c: &Candidate,
    rec: &Record,
    deadline: &Deadline,
    act: Duration,
    dir: &Path,
) -> io::Result<()> {
    let _ = std::fs::create_dir(dir);
    let source = format!("/dev/{}", c.device);
    let fstype = c.fstype.clone();
    let target = dir.to_path_buf();
    let mounted = bounded(deadline.cap(act), move || {
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some(source.as_str()),
            target.as_path(),
            Some(fstype.as_str()),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("mount: {e}")))
    });
    match mounted {
        Outcome::Done => {}
        // A mount that did not finish may still: undo it if it did.
        Outcome::TimedOut => {
            let _ = unmount(deadline, act, dir);
            return Err(io::Error::other("mount timed out"));
        }
        other => return Err(io::Error::other(other.to_string())),
    }
    let text = rec.encode();
    let file = dir.join(record::file_for(&c.fstype));
    let written = bounded(deadline.cap(act), move || {
        let parent = file
            .parent()
            .ok_or_else(|| io::Error::other("no directory"))?;
        std::fs::create_dir_all(parent)?;
        record::write_atomic(&file, text.as_bytes())?;
        std::fs::File::open(parent)?.sync_all()
    });
    let unmounted = unmount(deadline, act, dir);
    if !written.is_done() {
        return Err(io::Error::other(format!("writing: {written}")));
    }
    unmounted
}

/// Unmounts `dir`; detaches it lazily if that does not work. Run even after the
/// deadline, within its reserve: a file system left mounted is left dirty.
fn unmount(deadline: &Deadline, act: Duration, dir: &Path) -> io::Result<()> {
    let d = dir.to_path_buf();
    let outcome = bounded(deadline.cap_last_resort(act), move || {
        nix::mount::umount(d.as_path()).map_err(io::Error::from)
    });
    if outcome.is_done() {
        return Ok(());
    }
    let d = dir.to_path_buf();
    let detach = bounded(deadline.cap_last_resort(act), move || {
        nix::mount::umount2(d.as_path(), nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
    });
    Err(io::Error::other(format!(
        "unmounting: {outcome}; detached lazily: {detach}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    fn sh(cmd: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {:?}", out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The real acts on a real file system: an ext4 image on a loop device is mounted,
    /// written and unmounted as at shutdown, and the record read back whole.
    #[test]
    #[ignore = "needs root and loop devices: mounts an ext4 image"]
    fn writes_the_record_to_a_real_file_system() {
        let base = std::env::temp_dir().join(format!("exitrd-record-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let img = base.join("boot.img");
        sh(&format!(
            "truncate -s 16M {0} && mkfs.ext4 -q {0}",
            img.display()
        ));
        let loopdev = sh(&format!("losetup --find --show {}", img.display()));
        let c = Candidate {
            mount_point: "/boot".into(),
            device: loopdev.trim_start_matches("/dev/").to_string(),
            fstype: "ext4".into(),
        };
        let rec = make(
            "poweroff",
            Duration::from_millis(400),
            &Inventory::default(),
            vec![],
            false,
        );
        let deadline = Deadline::new(Instant::now(), Duration::from_secs(30));
        let dir = base.join("mnt");
        let result = write_to(&c, &rec, &deadline, Duration::from_secs(5), &dir);
        let check = base.join("check");
        std::fs::create_dir_all(&check).unwrap();
        sh(&format!("mount -o ro {loopdev} {}", check.display()));
        let text = std::fs::read_to_string(check.join(record::BOOT_FILE));
        sh(&format!("umount {}; losetup -d {loopdev}", check.display()));
        result.unwrap();
        let back = Record::decode(&text.unwrap()).unwrap();
        assert_eq!(back, rec);
        assert!(back.clean);
        // Unmounted again: nothing left on the directory.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "still mounted");
        let _ = std::fs::remove_dir_all(&base);
    }
}
