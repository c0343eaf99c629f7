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
use std::collections::BTreeMap;
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
