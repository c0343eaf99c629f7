//! What the run says it did: the inventory line at the end and the inventory file the
//! hooks read.

use super::schedule::Progress;
use super::{is_device_step, read_topology, OLDROOT};
use crate::plan::{self, PlanOptions, Step};
use crate::say;
use crate::topology::Topology;

/// The inventory file for hooks, at the root of the exitrd tmpfs.
pub const INVENTORY_FILE: &str = "/inventory";

/// The name a device had when the teardown began (`initial`: kernel name, display name),
/// or its kernel name if it had none then.
pub fn display_name<'a>(initial: &'a [(String, String)], device: &'a str) -> &'a str {
    initial
        .iter()
        .find(|(n, _)| n == device)
        .map_or(device, |(_, d)| d.as_str())
}

/// Says that `device` went without our removing it.
pub fn say_gone(display: &str, device: &str) {
    say!("{display} ({device}) is gone: removed by the kernel when its last user closed it");
}

/// What the inventory found: the shutdown record is made of it.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Closed by a step of ours, in order (display names).
    pub closed: Vec<String>,
    /// Removed by the kernel by itself (display names).
    pub by_kernel: Vec<String>,
    /// Devices left: name and reason.
    pub left: Vec<(String, String)>,
    /// Mounts still below /oldroot.
    pub mounts_left: usize,
    /// The mount points still below /oldroot.
    pub mount_points_left: Vec<String>,
}

/// One line an admin can grep for: what was closed, and what is left with the reason.
pub fn inventory(initial_devices: &[(String, String)], progress: &Progress) -> Inventory {
    inventory_of(read_topology().as_ref(), initial_devices, progress)
}

/// [`inventory`] on the topology read after the teardown.
pub fn inventory_of(
    topo: Option<&Topology>,
    initial_devices: &[(String, String)],
    progress: &Progress,
) -> Inventory {
    // Still there and still closable: a stopped MD array lingers in sysfs for a
    // moment as an empty device, which counts as closed. And found gone once, gone for
    // the run, as the scheduler counts it: after the kernel's deferred removal a DM
    // device's sysfs entry can outlive its name for a moment (seen: vda3_crypt found
    // gone at its step, then listed as "dm-0 (not attempted)" by this inventory).
    let present = |name: &str| {
        !progress.gone_by_kernel.contains(name)
            && topo
                .and_then(|t| t.devices.get(name))
                .is_some_and(|d| d.is_closable())
    };
    let display_of = |d: &str| {
        initial_devices
            .iter()
            .find(|(n, _)| n == d)
            .map(|(_, display)| display.clone())
    };
    // Closed by a step of ours (its ioctl did the work), in the order they went...
    let closed: Vec<String> = progress
        .done
        .iter()
        .flat_map(|s| s.closes_devices())
        .filter(|d| !present(d) && !progress.gone_by_kernel.contains(*d))
        .filter_map(display_of)
        .collect();
    // ...and those the kernel removed by itself: found gone at their step, or gone
    // without one (deferred removal when the last user closed them, loop autoclear).
    let mut by_kernel: Vec<String> = Vec::new();
    for (name, display) in initial_devices {
        if present(name) || closed.contains(display) {
            continue;
        }
        if !progress.gone_by_kernel.contains(name) {
            say_gone(display, name);
        }
        by_kernel.push(display.clone());
    }
    let mut left: Vec<String> = Vec::new();
    let mut inv = Inventory::default();
    if let Some(topo) = topo {
        inv.mount_points_left = topo
            .mounts
            .iter()
            .filter(|m| plan::in_scope(&m.mount_point, OLDROOT))
            .map(|m| m.mount_point.to_string())
            .collect();
        let below = inv.mount_points_left.len();
        inv.mounts_left = below;
        if below > 0 {
            say!("{below} mount(s) still below {OLDROOT}");
        }
        let remaining = plan::plan(topo, &PlanOptions::shutdown());
        for step in remaining
            .steps
            .iter()
            .filter(|s| is_device_step(s) && !progress.found_gone(s))
        {
            let reason = progress
                .failed
                .get(&step.describe())
                .cloned()
                .unwrap_or_else(|| "not attempted".into());
            let name = match step {
                Step::RemoveDm { name, .. } => name.clone(),
                other => other.closes_device().unwrap_or_default().to_string(),
            };
            left.push(format!("{name} ({reason})"));
            inv.left.push((name, reason));
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
    inv.closed = closed;
    inv.by_kernel = by_kernel;
    inv
}

/// The inventory file for hooks: what is still mounted below /oldroot and the steps left.
pub fn write_inventory_file() {
    let Some(topo) = read_topology() else { return };
    let p = plan::plan(&topo, &PlanOptions::shutdown());
    let text: String = p
        .steps
        .iter()
        .map(|s| format!("{}\n", s.describe()))
        .collect();
    // The hooks would read an old list, or none: worth a line.
    if let Err(e) = std::fs::write(INVENTORY_FILE, text) {
        say!("cannot write {INVENTORY_FILE} for the hooks: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture() -> Topology {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm-luks-md");
        Topology::read(&root).expect("fixture topology")
    }

    fn initial(topo: &Topology) -> Vec<(String, String)> {
        topo.devices
            .values()
            .filter(|d| d.is_closable())
            .map(|d| (d.name.clone(), d.display_name().to_string()))
            .collect()
    }

    #[test]
    fn devices_still_in_sysfs_are_left() {
        let topo = fixture();
        let inv = inventory_of(Some(&topo), &initial(&topo), &Progress::default());
        assert!(inv.by_kernel.is_empty(), "{inv:?}");
        assert!(inv.left.iter().any(|(n, _)| n == "vg0-root"), "{inv:?}");
    }

    #[test]
    fn a_device_found_gone_is_not_left_while_its_sysfs_entry_lingers() {
        // dm-0 and dm-1 found gone at their steps (deferred removal), their sysfs
        // entries still there when the inventory reads the topology.
        let topo = fixture();
        let dm: Vec<String> = topo
            .devices
            .keys()
            .filter(|n| n.starts_with("dm-"))
            .cloned()
            .collect();
        assert_eq!(dm.len(), 2, "{dm:?}");
        let progress = Progress {
            gone_by_kernel: dm.iter().cloned().collect(),
            ..Progress::default()
        };
        let inv = inventory_of(Some(&topo), &initial(&topo), &progress);
        for (name, display) in initial(&topo).iter().filter(|(n, _)| dm.contains(n)) {
            assert!(inv.by_kernel.contains(display), "{name}: {inv:?}");
            assert!(
                !inv.left.iter().any(|(n, _)| n == name || n == display),
                "{inv:?}"
            );
        }
        assert!(inv.left.iter().any(|(n, _)| n == "md0"), "{inv:?}");
    }
}
