//! Reading the machine: mounts, swaps and the block device graph. Every reader takes the
//! root of the tree to read (`/` on a live machine, a fixture directory in tests).

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
    /// Problems met while reading, kept so they can be reported instead of aborting.
    pub warnings: Vec<String>,
}

impl Topology {
    /// Reads `proc/self/mountinfo`, `proc/swaps` and `sys/class/block` under `root`.
    /// Only a missing or unreadable mountinfo is an error; everything else degrades to a
    /// warning so that a shutdown can go on with partial knowledge.
    pub fn read(root: &Path) -> std::io::Result<Topology> {
        let mountinfo_path = root.join("proc/self/mountinfo");
        let text = std::fs::read_to_string(&mountinfo_path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", mountinfo_path.display()))
        })?;
        let (mounts, errors) = mountinfo::parse_lenient(&text);
        let mut warnings: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let swaps = match std::fs::read_to_string(root.join("proc/swaps")) {
            Ok(t) => swaps::parse(&t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warnings.push(format!("proc/swaps: {e}"));
                Vec::new()
            }
        };
        let devices = block::read(root);
        if devices.is_empty() {
            warnings.push("sys/class/block: no block devices found".into());
        }
        Ok(Topology {
            mounts,
            swaps,
            devices,
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
