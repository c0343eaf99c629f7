//! What the run says it did: the inventory line at the end and the inventory file the
//! hooks read.

use super::schedule::Progress;
use super::{is_device_step, read_topology, OLDROOT};
use crate::plan::{self, PlanOptions, Step};
use crate::say;

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
    let topo = read_topology();
    // Still there and still closable: a stopped MD array lingers in sysfs for a
    // moment as an empty device, which counts as closed.
    let present = |name: &str| {
        topo.as_ref()
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
        .filter_map(|s| s.closes_device())
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
    if let Some(topo) = &topo {
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
        for step in remaining.steps.iter().filter(|s| is_device_step(s)) {
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
