//! Reading the machine: mounts, swaps and the block device graph. Every reader takes the
//! root of the tree to read (`/` on a live machine, a fixture directory in tests).
//!
//! A leaf: nothing here uses the teardown or the runtime. Both build on these readers,
//! and `exitrd plan` and the tests use them on machines and fixtures where no device may
//! be touched.

pub mod block;
pub mod mountinfo;
pub mod swaps;

use block::BlockDev;
use mountinfo::Mount;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use swaps::Swap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Topology {
    pub mounts: Vec<Mount>,
    pub swaps: Vec<Swap>,
    pub devices: BTreeMap<String, BlockDev>,
    /// MD arrays with a write-intent bitmap in a file: array name -> file path, from
    /// `proc/mdstat` (sysfs only says "file").
    pub md_bitmap_files: BTreeMap<String, String>,
    /// Problems met while reading, kept so they can be reported instead of aborting.
    pub warnings: Vec<String>,
    /// Loop devices whose backing file is not where its recorded path leads: the kernel
    /// records the path within the file's own mount, and when that mount was detached
    /// (systemd-shutdown detaches a ramfs lazily: live-boot's `fetch=` medium) the path
    /// names another file system's place, or none. Empty unless the exitrd marked them
    /// ([`backing_file_found`]); the planner then does not take the mount at that path for
    /// the one holding the file.
    #[serde(skip)]
    pub unreachable_loop_files: BTreeSet<String>,
}

/// Whether `file`, a loop device's recorded backing file, is there below `root`: at its
/// path, or below `scope` (paths recorded before the pivot lead below the old root).
pub fn backing_file_found(root: &Path, scope: &str, file: &str) -> bool {
    let rel = file.trim_start_matches('/');
    let scoped = root.join(scope.trim_start_matches('/')).join(rel);
    scoped.exists() || root.join(rel).exists()
}

impl Topology {
    /// Reads `proc/self/mountinfo`, `proc/swaps` and `sys/class/block` under `root`.
    /// Only a missing or unreadable mountinfo is an error; everything else degrades to a
    /// warning so that a shutdown can go on with partial knowledge.
    pub fn read(root: &Path) -> std::io::Result<Topology> {
        let mountinfo_path = root.join("proc/self/mountinfo");
        // Bytes: a mount point need not be UTF-8, and the kernel writes it as it is.
        let table = std::fs::read(&mountinfo_path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", mountinfo_path.display()))
        })?;
        let (mounts, errors) = mountinfo::parse_lenient(&table);
        let mut warnings: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let swaps = match read_lossy(&root.join("proc/swaps")) {
            Ok(t) => swaps::parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warnings.push(format!("proc/swaps: {e}"));
                Vec::new()
            }
        };
        let devices = block::read(root);
        let md_bitmap_files = read_lossy(&root.join("proc/mdstat"))
            .map(|t| mdstat_bitmap_files(&t))
            .unwrap_or_default();
        if devices.is_empty() {
            warnings.push("sys/class/block: no block devices found".into());
        }
        Ok(Topology {
            unreachable_loop_files: BTreeSet::new(),
            mounts,
            swaps,
            devices,
            md_bitmap_files,
            warnings,
        })
    }

    /// The device a mount or swap sits on, by device number.
    pub fn device_by_number(&self, major: u32, minor: u32) -> Option<&BlockDev> {
        self.devices
            .values()
            .find(|d| d.major == major && d.minor == minor)
    }

    /// The device behind a swap entry when it is a block device (`/dev/dm-2`,
    /// `/dev/mapper/vg0-swap`, `/dev/vda2`).
    pub fn device_by_path(&self, path: &str) -> Option<&BlockDev> {
        let name = path.strip_prefix("/dev/")?;
        if let Some(dm_name) = name.strip_prefix("mapper/") {
            return self.devices.values().find(|d| {
                d.display_name() == dm_name && matches!(d.kind, block::DevKind::Dm { .. })
            });
        }
        self.devices.get(name)
    }
}

impl Topology {
    /// The device-mapper devices in the order they can be suspended for the last resort
    /// (devices that could not be removed are suspended with their writes flushed): every
    /// device before the devices it sits on, since suspending one flushes its writes into
    /// those below, which must still be running. Kernel-name order (`dm-0`, `dm-1`) is
    /// usually bottom-up and would freeze the file system on an LV into a dm-crypt mapping
    /// already suspended. Holders are followed through non-DM devices (DM on MD on DM).
    /// Devices built on a loop device come before the others: the loop's file lives on a
    /// file system on some other device, which sysfs does not link; the more loop devices
    /// below, the earlier. A cycle (inconsistent sysfs) cannot stop it: what is left goes
    /// in kernel-name order.
    pub fn dm_top_down(&self) -> Vec<&BlockDev> {
        let is_dm = |d: &BlockDev| matches!(d.kind, block::DevKind::Dm { .. });
        let reach = |start: &BlockDev, next: &dyn Fn(&BlockDev) -> &[String]| {
            let mut seen: Vec<&BlockDev> = Vec::new();
            let mut todo: Vec<&str> = next(start).iter().map(String::as_str).collect();
            while let Some(name) = todo.pop() {
                let Some(d) = self.devices.get(name) else {
                    continue;
                };
                if seen.iter().any(|s| s.name == d.name) {
                    continue;
                }
                seen.push(d);
                todo.extend(next(d).iter().map(String::as_str));
            }
            seen
        };
        let dms: Vec<&BlockDev> = self.devices.values().filter(|d| is_dm(d)).collect();
        // For each DM device: the DM devices above it, and how many loop devices below.
        let above: BTreeMap<&str, Vec<&str>> = dms
            .iter()
            .map(|d| {
                let up = reach(d, &|x: &BlockDev| &x.holders);
                let names = up.iter().filter(|x| is_dm(x)).map(|x| x.name.as_str());
                (d.name.as_str(), names.collect())
            })
            .collect();
        let loops_below = |d: &BlockDev| {
            reach(d, &|x: &BlockDev| &x.slaves)
                .iter()
                .filter(|x| matches!(x.kind, block::DevKind::Loop { .. }))
                .count()
        };
        let mut left = dms;
        let mut order: Vec<&BlockDev> = Vec::new();
        while !left.is_empty() {
            let ready = left
                .iter()
                .enumerate()
                .filter(|(_, d)| {
                    above[d.name.as_str()]
                        .iter()
                        .all(|a| order.iter().any(|o| o.name == *a))
                })
                // Most loops below first; among equals, kernel-name order (min_by_key
                // keeps the first of equal keys).
                .min_by_key(|(_, d)| std::cmp::Reverse(loops_below(d)))
                .map(|(i, _)| i);
            order.push(left.remove(ready.unwrap_or(0)));
        }
        order
    }
}

/// A kernel table as text. Paths in it need not be UTF-8 (the kernel writes them byte for
/// byte): such bytes become U+FFFD, and the rest of the table is still read.
fn read_lossy(path: &Path) -> std::io::Result<String> {
    std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Bitmap files from `/proc/mdstat`: an array's paragraph starts with `md0 : active ...`
/// and may have a line `bitmap: 1/1 pages [4KB], 64KB chunk, file: /path`.
pub fn mdstat_bitmap_files(text: &str) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut array: Option<String> = None;
    for line in text.lines() {
        if let Some((name, _)) = line.split_once(" : ") {
            if !line.starts_with(char::is_whitespace) {
                array = Some(name.trim().to_string());
                continue;
            }
        }
        if let (Some(a), Some((_, file))) = (&array, line.split_once("file: ")) {
            if line.trim_start().starts_with("bitmap:") {
                files.insert(a.clone(), mountinfo::unescape(file.trim()));
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, kind: block::DevKind, holders: &[&str], slaves: &[&str]) -> BlockDev {
        BlockDev {
            name: name.into(),
            major: 0,
            minor: 0,
            kind,
            holders: holders.iter().map(|s| s.to_string()).collect(),
            slaves: slaves.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn dm(name: &str, uuid: &str) -> block::DevKind {
        block::DevKind::Dm {
            name: name.into(),
            uuid: uuid.into(),
            kind: block::dm_kind(uuid),
        }
    }

    fn topology(devices: Vec<BlockDev>) -> Topology {
        Topology {
            devices: devices.into_iter().map(|d| (d.name.clone(), d)).collect(),
            ..Topology::default()
        }
    }

    fn names(order: Vec<&BlockDev>) -> Vec<&str> {
        order.iter().map(|d| d.name.as_str()).collect()
    }

    /// Debian's installer layout: the dm-crypt mapping (dm-0) under the LVs (dm-1, dm-2)
    /// gets the lower kernel name; suspended first it would stall the LVs' flush.
    /// A backing file is found at its path or below the old root; the path of a file on
    /// a detached file system leads nowhere.
    #[test]
    fn backing_files_are_looked_for_at_their_path_and_below_the_old_root() {
        let root = crate::fixture::tree(
            "loop-files",
            &[
                ("oldroot/var/lib/disk.img", "x"),
                ("run/exitrd-held/40/live/filesystem.squashfs", "x"),
            ],
        );
        assert!(backing_file_found(&root, "/oldroot", "/var/lib/disk.img"));
        assert!(backing_file_found(
            &root,
            "/oldroot",
            "/run/exitrd-held/40/live/filesystem.squashfs"
        ));
        assert!(!backing_file_found(
            &root,
            "/oldroot",
            "/live/filesystem.squashfs"
        ));
    }

    #[test]
    fn dm_suspend_order_is_top_down_not_kernel_name_order() {
        let t = topology(vec![
            dev("vda", block::DevKind::Disk, &["md0"], &[]),
            dev(
                "md0",
                block::DevKind::Md {
                    level: "raid1".into(),
                },
                &["dm-0"],
                &["vda"],
            ),
            dev(
                "dm-0",
                dm("md0_crypt", "CRYPT-LUKS2-x-md0_crypt"),
                &["dm-1", "dm-2"],
                &["md0"],
            ),
            dev("dm-1", dm("vg0-root", "LVM-a"), &[], &["dm-0"]),
            dev("dm-2", dm("vg0-swap", "LVM-b"), &[], &["dm-0"]),
        ]);
        assert_eq!(names(t.dm_top_down()), ["dm-1", "dm-2", "dm-0"]);
    }

    /// Holders are followed through an MD array: DM over MD over DM.
    #[test]
    fn dm_suspend_order_follows_holders_through_md() {
        let t = topology(vec![
            dev("dm-0", dm("a", "CRYPT-PLAIN-a"), &["md9"], &[]),
            dev(
                "md9",
                block::DevKind::Md {
                    level: "raid1".into(),
                },
                &["dm-1"],
                &["dm-0"],
            ),
            dev("dm-1", dm("top", ""), &[], &["md9"]),
        ]);
        assert_eq!(names(t.dm_top_down()), ["dm-1", "dm-0"]);
    }

    /// A device on a loop device whose file lives on the root LV goes before that LV:
    /// suspending the LV freezes the file system that the loop device writes into.
    #[test]
    fn dm_suspend_order_puts_devices_on_loop_files_first() {
        let t = topology(vec![
            dev(
                "dm-0",
                dm("md0_crypt", "CRYPT-LUKS2-x-md0_crypt"),
                &["dm-1"],
                &[],
            ),
            dev("dm-1", dm("vg0-root", "LVM-a"), &[], &["dm-0"]),
            dev(
                "loop0",
                block::DevKind::Loop {
                    backing_file: Some("/var/stall.img".into()),
                },
                &["dm-2"],
                &[],
            ),
            dev("dm-2", dm("stall", ""), &[], &["loop0"]),
        ]);
        assert_eq!(names(t.dm_top_down()), ["dm-2", "dm-1", "dm-0"]);
    }

    /// sysfs read while devices came and went can hold a cycle: every device is still
    /// listed once.
    #[test]
    fn dm_suspend_order_survives_a_cycle() {
        let t = topology(vec![
            dev("dm-0", dm("a", ""), &["dm-1"], &["dm-1"]),
            dev("dm-1", dm("b", ""), &["dm-0"], &["dm-0"]),
            dev("dm-2", dm("c", ""), &[], &[]),
        ]);
        let mut order = names(t.dm_top_down());
        assert_eq!(order.len(), 3);
        order.sort();
        assert_eq!(order, ["dm-0", "dm-1", "dm-2"]);
    }

    /// One mount point that is not UTF-8 must not hide the whole mount table: the shutdown
    /// would unmount nothing.
    #[test]
    fn a_mount_point_that_is_not_utf8_does_not_hide_the_mount_table() {
        let root = std::env::temp_dir().join(format!("exitrd-topology-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(
            root.join("proc/self/mountinfo"),
            b"22 1 252:1 / / rw - ext4 /dev/vda1 rw\n\
              63 22 0:39 / /media/caf\xe9 rw - vfat /dev/sdb1 rw\n",
        )
        .unwrap();
        let t = Topology::read(&root);
        std::fs::remove_dir_all(&root).unwrap();
        let t = t.unwrap();
        assert_eq!(t.mounts.len(), 2);
        assert_eq!(t.mounts[1].mount_point.as_bytes(), b"/media/caf\xe9");
    }

    /// A swap file whose name is not UTF-8 must not hide the other swap areas (none would
    /// be switched off).
    #[test]
    fn a_swap_file_that_is_not_utf8_does_not_hide_the_swap_table() {
        let root = std::env::temp_dir().join(format!("exitrd-swaps-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(root.join("proc/self/mountinfo"), b"").unwrap();
        std::fs::write(
            root.join("proc/swaps"),
            b"Filename\tType\tSize\tUsed\tPriority\n\
              /dev/dm-2 partition\t1048572\t0\t-2\n\
              /swap-caf\xe9 file\t65532\t0\t-3\n",
        )
        .unwrap();
        let t = Topology::read(&root);
        std::fs::remove_dir_all(&root).unwrap();
        let t = t.unwrap();
        assert!(
            t.warnings.iter().all(|w| !w.contains("swaps")),
            "{:?}",
            t.warnings
        );
        assert_eq!(t.swaps.len(), 2);
        assert_eq!(t.swaps[0].path, "/dev/dm-2");
    }

    #[test]
    fn bitmap_files_from_mdstat() {
        let text = "Personalities : [raid1]\n\
md1 : active raid1 vdc[1] vdb[0]\n\
      1046528 blocks super 1.2 [2/2] [UU]\n\
      bitmap: 0/1 pages [0KB], 65536KB chunk, file: /oldroot/bitmap/md1\\040map\n\
\n\
md0 : active raid1 vda[0] vdd[1]\n\
      1046528 blocks super 1.2 [2/2] [UU]\n\
      bitmap: 1/1 pages [4KB], 65536KB chunk\n\
\n\
unused devices: <none>\n";
        let files = mdstat_bitmap_files(text);
        assert_eq!(files.len(), 1);
        assert_eq!(files["md1"], "/oldroot/bitmap/md1 map");
    }
}
