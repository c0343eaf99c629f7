//! The record of the last shutdown: written by the shutdown runtime to a file system
//! outside the closed stack (a plain `/boot`, or the ESP), read back by `exitrd status`
//! at the next boot.
//!
//! This module holds what both sides share and what can be tested without a machine:
//! the record's format, the verdict line, the places a record may go (from fstab and the
//! `/dev/disk/by-*` links) and which devices are refused, the boot ids that tell a stale
//! record from the last shutdown's, and the journal entry and node_exporter text made of
//! it. Every reader takes a root path.

use crate::topology::block::{BlockDev, DevKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The record's format version.
pub const FORMAT: u32 = 1;
/// The MESSAGE_ID of the journal entry `exitrd.service` makes at each boot about the
/// last shutdown (`journalctl MESSAGE_ID=877bac54149a40d2bbc38feeccc23379`).
pub const MESSAGE_ID: &str = "877bac54149a40d2bbc38feeccc23379";
/// The record on an ext2/3/4 `/boot`, relative to that file system.
pub const BOOT_FILE: &str = "exitrd/last-shutdown.json";
/// The record on the ESP (vfat), relative to that file system.
pub const ESP_FILE: &str = "EFI/exitrd/last-shutdown.json";
/// The id of the boot that last ran `exitrd status --repair`, below the root.
pub const BOOT_ID_FILE: &str = "var/lib/exitrd/boot-id";
/// The id of the boot before it.
pub const PREVIOUS_BOOT_ID_FILE: &str = "var/lib/exitrd/previous-boot-id";
/// The kernel's id of the running boot, below the root.
pub const KERNEL_BOOT_ID: &str = "proc/sys/kernel/random/boot_id";
/// What a record is limited to when read back: it is a few hundred bytes.
const MAX_RECORD: u64 = 64 * 1024;

/// A device the shutdown left open, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub device: String,
    pub reason: String,
}

/// What one shutdown did, as written at its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub exitrd_version: String,
    /// The boot that shut down (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Wall-clock time of the record, seconds since the epoch, and the same in UTC.
    pub time: u64,
    pub time_utc: String,
    pub verb: String,
    pub duration_ms: u64,
    /// Nothing of the stack left: no device open, no mount below `/oldroot`.
    pub clean: bool,
    /// Closed by exitrd's own steps, in order.
    pub closed_by_exitrd: Vec<String>,
    /// Removed by the kernel when their last user let go (deferred removal, autoclear).
    pub closed_by_kernel: Vec<String>,
    pub left: Vec<Left>,
    pub mounts_left: usize,
    /// What held what was left, as the log said it ("/oldroot is held by 412 (sleep) via cwd").
    #[serde(default)]
    pub held_by: Vec<String>,
    pub deadline_reached: bool,
}

impl Record {
    pub fn encode(&self) -> String {
        // A struct of strings, numbers and lists always serializes.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn decode(text: &str) -> Result<Record, String> {
        let r: Record = serde_json::from_str(text).map_err(|e| format!("not a record: {e}"))?;
        if r.format != FORMAT {
            return Err(format!("record format {} unknown", r.format));
        }
        Ok(r)
    }

    /// The one line `exitrd status` prints.
    pub fn verdict(&self) -> String {
        let secs = self.duration_ms as f64 / 1000.0;
        if self.clean {
            // Grouped by who closed them: the kernel takes the upper devices as / goes.
            let mut groups: Vec<String> = Vec::new();
            if !self.closed_by_kernel.is_empty() {
                groups.push(format!("{} (kernel)", self.closed_by_kernel.join(", ")));
            }
            if !self.closed_by_exitrd.is_empty() {
                groups.push(format!("{} (exitrd)", self.closed_by_exitrd.join(", ")));
            }
            let closed_text = if groups.is_empty() {
                ", nothing to close".to_string()
            } else {
                format!(", closed {}", groups.join(", "))
            };
            format!(
                "last shutdown: clean, {secs:.1} s, {}{closed_text} ({})",
                self.verb, self.time_utc
            )
        } else {
            let mut parts: Vec<String> = Vec::new();
            if !self.left.is_empty() {
                let left: Vec<String> = self
                    .left
                    .iter()
                    .map(|l| format!("{} ({})", l.device, l.reason))
                    .collect();
                parts.push(format!("{} left open", left.join(", ")));
            }
            if self.mounts_left > 0 {
                parts.push(format!("{} mount(s) left below /oldroot", self.mounts_left));
            }
            if !self.held_by.is_empty() {
                parts.push(self.held_by.join("; "));
            }
            if self.deadline_reached {
                parts.push("the deadline was reached".into());
            }
            format!(
                "last shutdown NOT clean: {} ({}, {secs:.1} s, {})",
                parts.join("; "),
                self.verb,
                self.time_utc
            )
        }
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil calendar from the days,
/// after Howard Hinnant's algorithm).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A file system from fstab that may hold the record: `/boot` or `/boot/efi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FstabPlace {
    pub spec: String,
    pub mount_point: String,
    pub fstype: String,
}

/// The file systems a record may go to: ext2/3/4 or vfat, only those, at `/boot` or
/// `/boot/efi`.
pub fn fstab_places(text: &str) -> Vec<FstabPlace> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mount_point = crate::topology::mountinfo::unescape(f[1]);
        let mount_point = mount_point.trim_end_matches('/');
        if !matches!(mount_point, "/boot" | "/boot/efi") || !supported_fstype(f[2]) {
            continue;
        }
        if f.get(3).is_some_and(|o| o.split(',').any(|o| o == "ro")) {
            continue;
        }
        out.push(FstabPlace {
            spec: f[0].to_string(),
            mount_point: mount_point.to_string(),
            fstype: f[2].to_string(),
        });
    }
    out
}

pub fn supported_fstype(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4" | "vfat")
}

/// Where the record lives on a file system of `fstype`.
pub fn file_for(fstype: &str) -> &'static str {
    if fstype == "vfat" {
        ESP_FILE
    } else {
        BOOT_FILE
    }
}

/// udev's encoding of a label in `/dev/disk/by-label` (`/` and blanks as `\x2f`, `\x20`).
fn udev_encode(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out
}

/// The kernel name of the device an fstab spec names (`UUID=`, `LABEL=`, `PARTUUID=`,
/// `PARTLABEL=`, a `/dev` path), through the links below `root/dev`.
pub fn resolve_spec(root: &Path, spec: &str) -> Option<String> {
    let unquote = |v: &str| v.trim_matches('"').to_string();
    // udev names by-uuid links as blkid spells the UUID: upper case for vfat
    // (`2B21-9671`, as the installer's fstab has it too), lower case for ext4; the spec
    // as written first, then in lower case for an ext4 UUID written in capitals.
    let by_id = |dir: &str, v: &str| {
        let dir = root.join(dir);
        let as_written = dir.join(unquote(v));
        if std::fs::symlink_metadata(&as_written).is_ok() {
            as_written
        } else {
            dir.join(unquote(v).to_ascii_lowercase())
        }
    };
    let link: PathBuf = if let Some(v) = spec.strip_prefix("UUID=") {
        by_id("dev/disk/by-uuid", v)
    } else if let Some(v) = spec.strip_prefix("PARTUUID=") {
        by_id("dev/disk/by-partuuid", v)
    } else if let Some(v) = spec.strip_prefix("LABEL=") {
        root.join("dev/disk/by-label")
            .join(udev_encode(&unquote(v)))
    } else if let Some(v) = spec.strip_prefix("PARTLABEL=") {
        root.join("dev/disk/by-partlabel")
            .join(udev_encode(&unquote(v)))
    } else if let Some(rel) = spec.strip_prefix("/dev/") {
        root.join("dev").join(rel)
    } else {
        return None;
    };
    let name = match std::fs::read_link(&link) {
        Ok(target) => target.file_name()?.to_string_lossy().into_owned(),
        // A device node itself (/dev/vda2).
        Err(_) if link.exists() && spec.starts_with("/dev/") => {
            link.file_name()?.to_string_lossy().into_owned()
        }
        Err(_) => return None,
    };
    Some(name)
}

/// Why the record must not go to `name`, if it must not: it is, or sits on, a device of
/// the stack (device-mapper, MD, loop, NBD, an iSCSI disk), something stacked on it, or
/// one of the devices the shutdown took down (`torn_down`, kernel names).
pub fn refuse_reason(
    devices: &BTreeMap<String, BlockDev>,
    name: &str,
    torn_down: &[String],
) -> Option<String> {
    let Some(dev) = devices.get(name) else {
        return Some(format!("{name} is not in sysfs"));
    };
    if torn_down.iter().any(|t| t == name) {
        return Some(format!("{name} was taken down by this shutdown"));
    }
    let stacked = |d: &BlockDev| match &d.kind {
        DevKind::Dm { .. } => Some("a device-mapper device"),
        DevKind::Md { .. } => Some("an MD array"),
        DevKind::Loop { .. } => Some("a loop device"),
        DevKind::Nbd { .. } => Some("a network block device"),
        // Gone with its session's logout before the record is written.
        DevKind::Iscsi { .. } => Some("an iSCSI disk"),
        DevKind::Disk | DevKind::Partition { .. } => None,
    };
    // Walk the device and everything it is built on: slaves, and a partition's disk.
    let mut todo = vec![name.to_string()];
    let mut seen: Vec<String> = Vec::new();
    while let Some(n) = todo.pop() {
        if seen.contains(&n) || seen.len() > 64 {
            continue;
        }
        seen.push(n.clone());
        let Some(d) = devices.get(&n) else { continue };
        if let Some(what) = stacked(d) {
            return Some(if n == name {
                format!("{} is {what}, part of the storage stack", d.display_name())
            } else {
                format!("{name} sits on {} ({what})", d.display_name())
            });
        }
        if torn_down.contains(&n) {
            return Some(format!("{name} sits on {n}, taken down by this shutdown"));
        }
        todo.extend(d.slaves.iter().cloned());
        if let DevKind::Partition {
            parent: Some(parent),
        } = &d.kind
        {
            todo.push(parent.clone());
        }
    }
    if !dev.holders.is_empty() {
        return Some(format!(
            "{name} is held by {} (part of a stack)",
            dev.holders.join(", ")
        ));
    }
    None
}

/// What `exitrd status` says about the last shutdown (`last_shutdown` in `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastShutdown {
    pub recorded: bool,
    /// The verdict of the record, when there is one for the last boot.
    pub clean: Option<bool>,
    /// The line `exitrd status` prints.
    pub summary: String,
    /// Why there is no record, when there is none.
    pub reason: Option<String>,
    /// The file read.
    pub path: Option<String>,
    /// The file systems a record may go to (mount points).
    pub places: Vec<String>,
    /// The boot before this one, as exitrd.service remembered it.
    pub previous_boot_id: Option<String>,
    pub record: Option<Record>,
}

const NO_RECORD: &str = "no record of the last shutdown (it did not go through exitrd: crash, power loss, or exitrd not ready)";

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The id of the boot before the running one: what exitrd.service stored at the last
/// boot, or, once it has run in this boot, what it moved aside.
pub fn previous_boot_id(root: &Path) -> Option<String> {
    let current = read_trimmed(&root.join(KERNEL_BOOT_ID));
    let stored = read_trimmed(&root.join(BOOT_ID_FILE));
    match (current, stored) {
        (Some(c), Some(s)) if c == s => read_trimmed(&root.join(PREVIOUS_BOOT_ID_FILE)),
        (_, s) => s,
    }
}

/// Remembers the running boot's id (exitrd.service, once per boot). Returns true when
/// this is the first time in this boot.
pub fn remember_boot(root: &Path) -> io::Result<bool> {
    let Some(current) = read_trimmed(&root.join(KERNEL_BOOT_ID)) else {
        return Err(io::Error::other("no boot id from the kernel"));
    };
    let stored = read_trimmed(&root.join(BOOT_ID_FILE));
    if stored.as_deref() == Some(current.as_str()) {
        return Ok(false);
    }
    let file = root.join(BOOT_ID_FILE);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let previous = root.join(PREVIOUS_BOOT_ID_FILE);
    match stored {
        Some(s) => replace_file(&previous, format!("{s}\n").as_bytes(), false)?,
        None => {
            let _ = std::fs::remove_file(&previous);
        }
    }
    replace_file(&file, format!("{current}\n").as_bytes(), false)?;
    Ok(true)
}

/// Writes `path` whole or not at all (a temporary file renamed over it), on disk when
/// this returns: the shutdown record, written as the machine goes down.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace_file(path, data, true)
}

/// Writes `path` whole or not at all for its readers (a temporary file renamed over it),
/// forced to disk first only when `durable`. exitrd.service's files at boot (the boot
/// ids, the node_exporter textfile) are not: the next shutdown's sync takes them there,
/// and a crash before that costs only the pairing of the next record with this boot.
/// (Two fsyncs through the root's storage stack at every boot for nothing; the bench
/// showed no change beyond its noise in the unit's start time.)
pub fn replace_file(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The file systems of the running system below `root` a record may go to, with the
/// refusals of those that cannot hold one.
pub fn live_places(
    root: &Path,
    devices: &BTreeMap<String, BlockDev>,
) -> (Vec<FstabPlace>, Vec<String>) {
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap_or_default();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for p in fstab_places(&fstab) {
        match resolve_spec(root, &p.spec) {
            None => refused.push(format!("{}: {} not found", p.mount_point, p.spec)),
            Some(name) => match refuse_reason(devices, &name, &[]) {
                Some(why) => refused.push(format!("{}: {why}", p.mount_point)),
                None => ok.push(p),
            },
        }
    }
    (ok, refused)
}

/// What is known about the last shutdown of the system below `root`.
pub fn last_shutdown(root: &Path, devices: &BTreeMap<String, BlockDev>) -> LastShutdown {
    let (places, refused) = live_places(root, devices);
    let previous_boot_id = previous_boot_id(root);
    let mut out = LastShutdown {
        recorded: false,
        clean: None,
        summary: String::new(),
        reason: None,
        path: None,
        places: places.iter().map(|p| p.mount_point.clone()).collect(),
        previous_boot_id: previous_boot_id.clone(),
        record: None,
    };
    if places.is_empty() {
        let mut why = "no place for a record of the last shutdown: no separate /boot or ESP \
                       outside the storage stack"
            .to_string();
        if !refused.is_empty() {
            why.push_str(&format!(" ({})", refused.join("; ")));
        }
        why.push_str(
            "; a plain ext4 /boot partition, or an ESP on /boot/efi, in /etc/fstab would make it possible",
        );
        out.summary = why.clone();
        out.reason = Some(why);
        return out;
    }
    let mut found: Vec<(PathBuf, Record)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for p in &places {
        let path = root
            .join(p.mount_point.trim_start_matches('/'))
            .join(file_for(&p.fstype));
        let read = std::fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            let mut s = String::new();
            f.take(MAX_RECORD).read_to_string(&mut s)?;
            Ok(s)
        });
        match read {
            Ok(text) => match Record::decode(&text) {
                Ok(r) => found.push((path, r)),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    // The record of the previous boot, if it is known; else the newest.
    found.sort_by_key(|(_, r)| std::cmp::Reverse(r.time));
    let chosen = match &previous_boot_id {
        Some(prev) => found.iter().find(|(_, r)| &r.boot_id == prev),
        None => found.first(),
    };
    match chosen {
        Some((path, r)) => {
            out.recorded = true;
            out.clean = Some(r.clean);
            out.summary = r.verdict();
            out.path = Some(path.display().to_string());
            out.record = Some(r.clone());
        }
        None => {
            let mut why = NO_RECORD.to_string();
            if let Some((_, stale)) = found.first() {
                why.push_str(&format!(
                    "; the record found is of an earlier boot ({}, {})",
                    stale.boot_id, stale.time_utc
                ));
            }
            if !problems.is_empty() {
                why.push_str(&format!("; {}", problems.join("; ")));
            }
            out.summary = why.clone();
            out.reason = Some(why);
        }
    }
    out
}

/// The fields of the journal entry about the last shutdown.
pub fn journal_fields(l: &LastShutdown) -> Vec<(&'static str, String)> {
    let priority = match l.clean {
        Some(true) => "6",
        // Not clean, or unknown because it did not go through exitrd.
        _ => "4",
    };
    let mut f = vec![
        ("MESSAGE_ID", MESSAGE_ID.to_string()),
        (
            "MESSAGE",
            format!("exitrd: {}", l.summary.replace('\n', " ")),
        ),
        ("PRIORITY", priority.to_string()),
        ("SYSLOG_IDENTIFIER", "exitrd".to_string()),
        ("EXITRD_RECORDED", u8::from(l.recorded).to_string()),
    ];
    if let Some(r) = &l.record {
        f.push(("EXITRD_CLEAN", u8::from(r.clean).to_string()));
        f.push(("EXITRD_VERB", r.verb.clone()));
        f.push(("EXITRD_DURATION_MS", r.duration_ms.to_string()));
        f.push(("EXITRD_BOOT_ID", r.boot_id.clone()));
        f.push(("EXITRD_VERSION", r.exitrd_version.clone()));
        let left: Vec<&str> = r.left.iter().map(|l| l.device.as_str()).collect();
        f.push(("EXITRD_LEFT", left.join(" ")));
    }
    f
}

/// The journal's native protocol: `KEY=value` lines, or for a value with a newline the
/// key, a newline, its length as 64-bit little endian, the value and a newline.
pub fn journal_datagram(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(k.as_bytes());
        if v.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Sends one entry to the journal below `root`.
pub fn send_journal(root: &Path, fields: &[(&str, String)]) -> io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to(
        &journal_datagram(fields),
        root.join("run/systemd/journal/socket"),
    )?;
    Ok(())
}

/// The node_exporter textfile collector's text.
pub fn prometheus_text(l: &LastShutdown) -> String {
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        s.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge(
        "exitrd_last_shutdown_recorded",
        "1 if the last shutdown went through exitrd and left a record.",
        u8::from(l.recorded).to_string(),
    );
    gauge(
        "exitrd_last_shutdown_clean",
        "1 if the last shutdown closed the whole storage stack (0 if not, or not recorded).",
        u8::from(l.clean == Some(true)).to_string(),
    );
    if let Some(r) = &l.record {
        gauge(
            "exitrd_last_shutdown_duration_seconds",
            "How long exitrd ran at the last shutdown.",
            format!("{:.3}", r.duration_ms as f64 / 1000.0),
        );
        gauge(
            "exitrd_last_shutdown_devices_left",
            "Devices of the storage stack the last shutdown left open.",
            r.left.len().to_string(),
        );
        gauge(
            "exitrd_last_shutdown_devices_closed",
            "Devices of the storage stack closed at the last shutdown (by exitrd or the kernel).",
            (r.closed_by_exitrd.len() + r.closed_by_kernel.len()).to_string(),
        );
        gauge(
            "exitrd_last_shutdown_timestamp_seconds",
            "When the last shutdown's record was written, seconds since the epoch.",
            r.time.to_string(),
        );
    }
    s
}

#[cfg(test)]
mod tests;
