//! The block device graph from sysfs: `sys/class/block/<name>/` with `dev`, `holders/`,
//! `slaves/`, and the per-driver directories `dm/`, `md/`, `loop/`.
//!
//! Only names are read from `holders/` and `slaves/`, so fixtures can store them as empty
//! files instead of symlinks.
//!
//! A whole SCSI disk of an iSCSI session is told by its place in sysfs (its device sits
//! below the session's, `.../hostH/sessionS/...`); the session's target and portal come
//! from `sys/class/iscsi_session` and `sys/class/iscsi_connection`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DmKind {
    /// An LVM logical volume (uuid `LVM-...`), including its hidden sub-volumes.
    Lvm,
    /// A dm-crypt mapping (uuid `CRYPT-...`), LUKS or plain.
    Crypt,
    /// Multipath, kpartx partitions, hand-made tables.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DevKind {
    Disk,
    Partition {
        parent: Option<String>,
    },
    Dm {
        name: String,
        uuid: String,
        kind: DmKind,
    },
    Md {
        level: String,
    },
    Loop {
        /// `None` when the loop device is not bound to a file (nothing to detach).
        backing_file: Option<String>,
    },
    Nbd {
        /// A client has handed the kernel a socket (the size is set); a disconnected
        /// device is an empty slot with nothing to close.
        connected: bool,
    },
    /// A whole SCSI disk (a LUN) of an iSCSI session; its partitions are partitions.
    Iscsi {
        /// The session's number (`sessionS` in sysfs), which the kernel's iSCSI
        /// interface takes.
        session: u32,
        /// The target's name (an IQN), when sysfs shows it.
        target: Option<String>,
        /// The portal the session logged in to, from its leading connection.
        address: Option<String>,
        port: Option<u16>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDev {
    /// Kernel name, as in `/sys/class/block` (`dm-0`, `md0`, `vda1`).
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub kind: DevKind,
    /// Devices stacked on this one (they must be closed first).
    pub holders: Vec<String>,
    /// Devices this one is built on.
    pub slaves: Vec<String>,
}

impl BlockDev {
    /// The name an admin knows: the DM name for device-mapper devices, else the kernel name.
    pub fn display_name(&self) -> &str {
        match &self.kind {
            DevKind::Dm { name, .. } if !name.is_empty() => name,
            _ => &self.name,
        }
    }

    /// Whether exitrd has a way to close this device at shutdown.
    pub fn is_closable(&self) -> bool {
        match &self.kind {
            DevKind::Dm { .. } | DevKind::Md { .. } => true,
            DevKind::Loop { backing_file } => backing_file.is_some(),
            DevKind::Nbd { connected } => *connected,
            // Closed by logging out of its session.
            DevKind::Iscsi { .. } => true,
            DevKind::Disk | DevKind::Partition { .. } => false,
        }
    }

    /// A short description of what this device is, for humans.
    pub fn describe(&self) -> String {
        match &self.kind {
            DevKind::Disk => "disk".into(),
            DevKind::Partition { .. } => "partition".into(),
            DevKind::Dm { kind, uuid, .. } => match kind {
                DmKind::Lvm => "LVM logical volume".into(),
                DmKind::Crypt if uuid.starts_with("CRYPT-LUKS") => {
                    format!("dm-crypt {}", uuid.split('-').nth(1).unwrap_or("LUKS"))
                }
                DmKind::Crypt => "dm-crypt".into(),
                DmKind::Other => "device-mapper".into(),
            },
            DevKind::Md { level } => format!("MD {level}"),
            DevKind::Loop { backing_file } => match backing_file {
                Some(f) => format!("loop on {f}"),
                None => "loop (unbound)".into(),
            },
            DevKind::Nbd { connected: true } => "network block device".into(),
            DevKind::Nbd { connected: false } => "network block device (disconnected)".into(),
            DevKind::Iscsi {
                session,
                target,
                address,
                port,
            } => format!(
                "iSCSI disk of session {session}{}",
                iscsi_names(
                    target.as_deref(),
                    portal(address.as_deref(), *port).as_deref()
                )
            ),
        }
    }
}

/// ` (TARGET on PORTAL)`, or as much of it as is known, for the lines that name an iSCSI
/// session.
pub fn iscsi_names(target: Option<&str>, portal: Option<&str>) -> String {
    match (target, portal) {
        (Some(t), Some(p)) => format!(" ({t} on {p})"),
        (Some(t), None) => format!(" ({t})"),
        (None, Some(p)) => format!(" (on {p})"),
        (None, None) => String::new(),
    }
}

/// A portal as iSCSI tools write it: `10.0.2.2:3260`, `[fd00::2]:3260`.
pub fn portal(address: Option<&str>, port: Option<u16>) -> Option<String> {
    let address = address?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    Some(match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// The iSCSI session a whole disk belongs to, and the SCSI host of that session, from the
/// disk's place in sysfs: `sys/class/block/sdX` links to
/// `.../hostH/sessionS/targetH:0:0/H:0:0:L/block/sdX` (a session's device is a child of
/// its SCSI host's). `None` for any other disk, and for fixtures that store plain
/// directories.
fn iscsi_session_of(class_dir: &Path, name: &str) -> Option<(u32, u32)> {
    let link = fs::read_link(class_dir.join(name)).ok()?;
    host_and_session(&link)
}

/// `(session, host)` from a sysfs path holding `hostH/sessionS`.
pub(crate) fn host_and_session(path: &Path) -> Option<(u32, u32)> {
    let parts: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    parts.windows(2).find_map(|pair| {
        let [host, session] = pair else { return None };
        let host = host.strip_prefix("host")?.parse().ok()?;
        let session = session.strip_prefix("session")?.parse().ok()?;
        Some((session, host))
    })
}

/// What sysfs says about an iSCSI session, for the lines that name it.
#[derive(Debug)]
struct IscsiNames {
    target: Option<String>,
    address: Option<String>,
    port: Option<u16>,
}

/// The connections of iSCSI session `session` (`connectionS:C` in
/// `sys/class/iscsi_connection`), by number, lowest (the leading one) first.
pub fn iscsi_connections(sys: &Path, session: u32) -> Vec<u32> {
    let prefix = format!("connection{session}:");
    let mut cids: Vec<u32> = list_names(&sys.join("class/iscsi_connection"))
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix)?.parse().ok())
        .collect();
    cids.sort_unstable();
    cids
}

/// The target's name and the portal of iSCSI session `session`, from `sys` (`/sys`).
///
/// Only attributes the kernel answers without waiting are read: this runs in PID 1. The
/// portal is the persistent one (where the session logged in, which is what an admin
/// configured); a connection's `address` and `port` are left alone, since the kernel takes
/// the connection's endpoint mutex to show them, which a connection being stopped holds.
fn iscsi_names_of(sys: &Path, session: u32) -> IscsiNames {
    let target = read_trimmed(
        &sys.join("class/iscsi_session")
            .join(format!("session{session}"))
            .join("targetname"),
    )
    .filter(|t| !t.is_empty());
    let conn = iscsi_connections(sys, session).first().map(|cid| {
        sys.join("class/iscsi_connection")
            .join(format!("connection{session}:{cid}"))
    });
    let attr = |name: &str| {
        conn.as_ref()
            .and_then(|c| read_trimmed(&c.join(name)))
            .filter(|v| !v.is_empty())
    };
    IscsiNames {
        target,
        address: attr("persistent_address"),
        port: attr("persistent_port").and_then(|p| p.parse().ok()),
    }
}

/// A sysfs attribute as text. A loop device's `backing_file` is a path, written byte for
/// byte: bytes that are not UTF-8 become U+FFFD rather than making the device look unbound
/// (an unbound loop device is never detached).
fn read_trimmed(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The kind of a device-mapper device from the uuid its tool gave it. cryptsetup also
/// names the devices it makes for dm-verity, dm-integrity and the integrity layer under an
/// authenticated LUKS2 device `CRYPT-VERITY-`, `CRYPT-INTEGRITY-` and `CRYPT-SUBDEV-`:
/// they hold no dm-crypt key, so they are not dm-crypt mappings.
pub(crate) fn dm_kind(uuid: &str) -> DmKind {
    const NOT_CRYPT: [&str; 3] = ["CRYPT-VERITY-", "CRYPT-INTEGRITY-", "CRYPT-SUBDEV-"];
    if uuid.starts_with("LVM-") {
        DmKind::Lvm
    } else if uuid.starts_with("CRYPT-") && !NOT_CRYPT.iter().any(|p| uuid.starts_with(p)) {
        DmKind::Crypt
    } else {
        DmKind::Other
    }
}

/// Whether the NBD device `name` is connected: its size is not zero. The kernel sets
/// the size when a client connects and clears it when the last user lets go. Also asked
/// by the teardown, which waits for a disconnect to show here.
pub fn nbd_connected(class_dir: &Path, name: &str) -> bool {
    read_trimmed(&class_dir.join(name).join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|s| s > 0)
}

/// The disk a partition belongs to. On a live system `sys/class/block/<part>` is a symlink
/// into the disk's directory; fixtures store plain directories, so fall back to the naming
/// rules (`vda1` -> `vda`, `nvme0n1p1`/`loop0p1` -> `nvme0n1`/`loop0`).
fn partition_parent(class_dir: &Path, name: &str, known: &dyn Fn(&str) -> bool) -> Option<String> {
    if let Ok(target) = fs::read_link(class_dir.join(name)) {
        if let Some(parent) = target.parent().and_then(|p| p.file_name()) {
            let parent = parent.to_string_lossy().into_owned();
            if parent != "block" {
                return Some(parent);
            }
        }
    }
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == name.len() {
        return None;
    }
    if known(stem) {
        return Some(stem.to_string());
    }
    let stem = stem.strip_suffix('p')?;
    known(stem).then(|| stem.to_string())
}

/// Reads every block device under `root/sys/class/block`. A missing directory yields an
/// empty graph; unreadable entries are skipped.
pub fn read(root: &Path) -> BTreeMap<String, BlockDev> {
    let class_dir = root.join("sys/class/block");
    let names = list_names(&class_dir);
    let known = |n: &str| names.iter().any(|x| x == n);
    let mut devs = BTreeMap::new();
    for name in &names {
        let dir = class_dir.join(name);
        let Some((major, minor)) = read_trimmed(&dir.join("dev")).and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }) else {
            continue;
        };
        let kind = if dir.join("dm").is_dir() {
            let uuid = read_trimmed(&dir.join("dm/uuid")).unwrap_or_default();
            DevKind::Dm {
                name: read_trimmed(&dir.join("dm/name")).unwrap_or_default(),
                kind: dm_kind(&uuid),
                uuid,
            }
        } else if dir.join("md").is_dir() {
            DevKind::Md {
                level: read_trimmed(&dir.join("md/level")).unwrap_or_default(),
            }
        } else if name.starts_with("loop") && !dir.join("partition").exists() {
            DevKind::Loop {
                backing_file: read_trimmed(&dir.join("loop/backing_file"))
                    .filter(|s| !s.is_empty()),
            }
        } else if dir.join("partition").exists() {
            DevKind::Partition {
                parent: partition_parent(&class_dir, name, &known),
            }
        } else if name.starts_with("nbd") {
            DevKind::Nbd {
                connected: nbd_connected(&class_dir, name),
            }
        } else if let Some((session, _)) = iscsi_session_of(&class_dir, name) {
            let names = iscsi_names_of(&root.join("sys"), session);
            DevKind::Iscsi {
                session,
                target: names.target,
                address: names.address,
                port: names.port,
            }
        } else {
            DevKind::Disk
        };
        devs.insert(
            name.clone(),
            BlockDev {
                name: name.clone(),
                major,
                minor,
                kind,
                holders: list_names(&dir.join("holders")),
                slaves: list_names(&dir.join("slaves")),
            },
        );
    }
    devs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_parent_by_name_rules() {
        let names = ["vda", "nvme0n1", "loop0", "md0"];
        let known = |n: &str| names.contains(&n);
        let dir = Path::new("/nonexistent");
        assert_eq!(
            partition_parent(dir, "vda1", &known).as_deref(),
            Some("vda")
        );
        assert_eq!(
            partition_parent(dir, "nvme0n1p2", &known).as_deref(),
            Some("nvme0n1")
        );
        assert_eq!(
            partition_parent(dir, "loop0p1", &known).as_deref(),
            Some("loop0")
        );
        assert_eq!(
            partition_parent(dir, "md0p1", &known).as_deref(),
            Some("md0")
        );
        assert_eq!(partition_parent(dir, "sdz1", &known), None);
    }

    #[test]
    fn nbd_connected_reads_the_size() {
        let dir = std::env::temp_dir().join(format!("exitrd-nbd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nbd0")).unwrap();
        std::fs::create_dir_all(dir.join("nbd1")).unwrap();
        std::fs::write(dir.join("nbd0/size"), "6291456\n").unwrap();
        std::fs::write(dir.join("nbd1/size"), "0\n").unwrap();
        assert!(nbd_connected(&dir, "nbd0"));
        assert!(!nbd_connected(&dir, "nbd1"));
        assert!(!nbd_connected(&dir, "nbd2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_loop_file_that_is_not_utf8_leaves_the_loop_device_bound() {
        let root = std::env::temp_dir().join(format!("exitrd-loop-{}", std::process::id()));
        let dir = root.join("sys/class/block/loop0");
        std::fs::create_dir_all(dir.join("loop")).unwrap();
        std::fs::write(dir.join("dev"), "7:0\n").unwrap();
        std::fs::write(dir.join("loop/backing_file"), b"/srv/caf\xe9.img\n").unwrap();
        let devs = read(&root);
        std::fs::remove_dir_all(&root).unwrap();
        let loop0 = &devs["loop0"];
        assert!(loop0.is_closable(), "{loop0:?}");
        assert_eq!(
            loop0.kind,
            DevKind::Loop {
                backing_file: Some("/srv/caf\u{fffd}.img".into())
            }
        );
    }

    use crate::fixture::tree;

    /// sda is LUN 0 of iSCSI session 3 (host 4), with a partition; sdb is a local disk.
    #[test]
    fn a_disk_below_an_iscsi_session_is_an_iscsi_disk_and_its_partitions_stay_partitions() {
        let lun = "sys/devices/platform/host4/session3/target4:0:0/4:0:0:0/block/sda";
        let root = tree(
            "iscsi-block",
            &[
                ("sys/class/block/sda", &format!("->../../{}", &lun[4..])),
                (
                    "sys/class/block/sda1",
                    &format!("->../../{}/sda1", &lun[4..]),
                ),
                (
                    "sys/class/block/sdb",
                    "->../../devices/pci0000:00/0000:00:05.0/host0/target0:0:0/0:0:0:0/block/sdb",
                ),
                (&format!("{lun}/dev"), "8:0\n"),
                (&format!("{lun}/sda1/dev"), "8:1\n"),
                (&format!("{lun}/sda1/partition"), "1\n"),
                (
                    "sys/devices/pci0000:00/0000:00:05.0/host0/target0:0:0/0:0:0:0/block/sdb/dev",
                    "8:16\n",
                ),
                (
                    "sys/class/iscsi_session/session3/targetname",
                    "iqn.2026-01.test:root\n",
                ),
                (
                    "sys/class/iscsi_connection/connection3:0/persistent_address",
                    "10.0.2.2\n",
                ),
                (
                    "sys/class/iscsi_connection/connection3:0/persistent_port",
                    "3260\n",
                ),
            ],
        );
        let devs = read(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            devs["sda"].kind,
            DevKind::Iscsi {
                session: 3,
                target: Some("iqn.2026-01.test:root".into()),
                address: Some("10.0.2.2".into()),
                port: Some(3260),
            }
        );
        assert!(devs["sda"].is_closable());
        assert_eq!(
            devs["sda"].describe(),
            "iSCSI disk of session 3 (iqn.2026-01.test:root on 10.0.2.2:3260)"
        );
        assert_eq!(
            devs["sda1"].kind,
            DevKind::Partition {
                parent: Some("sda".into())
            }
        );
        assert_eq!(devs["sdb"].kind, DevKind::Disk);
    }

    #[test]
    fn iscsi_sessions_and_portals_from_sysfs_paths() {
        let path = Path::new("../../devices/platform/host12/session7/target12:0:0/12:0:0:1");
        assert_eq!(host_and_session(path), Some((7, 12)));
        let path = Path::new("../../devices/pci0000:00/host0/target0:0:0/0:0:0:0/block/sda");
        assert_eq!(host_and_session(path), None);
        assert_eq!(
            portal(Some("10.0.2.2"), Some(3260)).as_deref(),
            Some("10.0.2.2:3260")
        );
        assert_eq!(
            portal(Some("fd00::2"), Some(3260)).as_deref(),
            Some("[fd00::2]:3260")
        );
        assert_eq!(portal(Some("10.0.2.2"), None).as_deref(), Some("10.0.2.2"));
        assert_eq!(portal(None, Some(3260)), None);
        assert_eq!(iscsi_names(None, None), "");
        assert_eq!(iscsi_names(Some("iqn.x"), None), " (iqn.x)");
        assert_eq!(iscsi_names(None, Some("h:1")), " (on h:1)");
    }

    #[test]
    fn dm_kinds_from_uuid() {
        assert_eq!(dm_kind("LVM-abc"), DmKind::Lvm);
        assert_eq!(dm_kind("CRYPT-LUKS2-0123-md0_crypt"), DmKind::Crypt);
        assert_eq!(dm_kind("CRYPT-PLAIN-late_crypt"), DmKind::Crypt);
        // cryptsetup's other devices carry no dm-crypt key.
        assert_eq!(dm_kind("CRYPT-VERITY-0123-root_verity"), DmKind::Other);
        assert_eq!(dm_kind("CRYPT-INTEGRITY-0123-int"), DmKind::Other);
        assert_eq!(dm_kind("CRYPT-SUBDEV-0123-md0_crypt_dif"), DmKind::Other);
        assert_eq!(dm_kind("mpath-3600"), DmKind::Other);
        assert_eq!(dm_kind(""), DmKind::Other);
    }
}
