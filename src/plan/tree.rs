//! The storage tree printed by `exitrd plan`: for every mount and swap area in scope, the
//! devices beneath it, and the devices the shutdown closes that nothing in scope is built
//! on. For humans only: the plan's order comes from the graph, not from these trees.

use super::{mounts_in_scope, Plan, PlanOptions};
use crate::topology::block::{BlockDev, DevKind};
use crate::topology::Topology;
use serde::Serialize;
use std::collections::BTreeSet;

/// One node of the storage tree shown by `exitrd plan`: a device and what it is built on.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceTree {
    pub device: String,
    pub name: String,
    pub what: String,
    pub built_on: Vec<DeviceTree>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageRoot {
    /// A mount point, `swap` for a swap device, or [`NOT_MOUNTED`] for a device the
    /// shutdown closes that no mount or swap area in scope is built on.
    pub used_as: String,
    /// The file system type; empty for [`NOT_MOUNTED`].
    pub fstype: String,
    pub tree: DeviceTree,
}

/// [`StorageRoot::used_as`] of closable devices that nothing in scope is built on (the
/// disks of a ZFS pool, which registers no holders in sysfs; a mapping opened by hand).
pub const NOT_MOUNTED: &str = "not mounted";

/// The most nodes one storage tree shows. A tree repeats what is shared below (two LVs
/// on one PV show the PV twice), so a hand-made graph (`exitrd plan --root`; sysfs never
/// does this) where each device is built on the same two others, level after level, makes
/// a tree that doubles with each level: it stops growing here.
pub(super) const MAX_TREE_NODES: usize = 1000;

/// The tree of `d` and what it is built on, at most [`MAX_TREE_NODES`] nodes.
fn device_tree(topo: &Topology, d: &BlockDev) -> DeviceTree {
    let mut budget = MAX_TREE_NODES;
    device_subtree(topo, d, &mut Vec::new(), &mut budget)
}

/// `path`: the devices from the top of the tree down to `d`'s holder. A device on it would
/// be built on itself (sysfs cannot loop, a hand-made tree can): shown, not walked again.
fn device_subtree<'a>(
    topo: &'a Topology,
    d: &'a BlockDev,
    path: &mut Vec<&'a str>,
    budget: &mut usize,
) -> DeviceTree {
    *budget = budget.saturating_sub(1);
    let mut below: Vec<&BlockDev> = d
        .slaves
        .iter()
        .filter_map(|s| topo.devices.get(s))
        .collect();
    if let DevKind::Partition {
        parent: Some(parent),
    } = &d.kind
    {
        below.extend(topo.devices.get(parent));
    }
    let mut built_on = Vec::new();
    path.push(&d.name);
    for b in below {
        if *budget == 0 {
            break;
        }
        if path.contains(&b.name.as_str()) {
            *budget -= 1;
            built_on.push(DeviceTree {
                device: b.name.clone(),
                name: b.display_name().to_string(),
                what: format!("{} (a cycle: it is built on itself)", b.describe()),
                built_on: Vec::new(),
            });
        } else {
            built_on.push(device_subtree(topo, b, path, budget));
        }
    }
    path.pop();
    DeviceTree {
        device: d.name.clone(),
        name: d.display_name().to_string(),
        what: d.describe(),
        built_on,
    }
}

/// The storage beneath every mounted block file system and swap device in scope.
///
/// `plan` is `plan(topo, opts)`, already made by the caller: its steps say which devices
/// the shutdown closes.
pub fn storage_roots(topo: &Topology, opts: &PlanOptions, plan: &Plan) -> Vec<StorageRoot> {
    let in_scope: Vec<_> = mounts_in_scope(topo, opts)
        .into_iter()
        .map(|i| &topo.mounts[i])
        .collect();
    let mut roots: Vec<StorageRoot> = in_scope
        .iter()
        .filter(|m| m.is_block_backed())
        .filter_map(|m| {
            let d = topo.device_by_number(m.major, m.minor)?;
            Some(StorageRoot {
                used_as: m.mount_point.to_string(),
                fstype: m.fstype.clone(),
                tree: device_tree(topo, d),
            })
        })
        .collect();
    roots.extend(topo.swaps.iter().filter_map(|s| {
        let d = topo.device_by_path(&s.path)?;
        Some(StorageRoot {
            used_as: "swap".into(),
            fstype: "swap".into(),
            tree: device_tree(topo, d),
        })
    }));
    // A ZFS dataset has no block device: its pool is the node, and the pool's disks
    // (unknown to sysfs) show among the devices below.
    roots.extend(in_scope.iter().filter(|m| m.fstype == "zfs").map(|m| {
        let pool = m.source.split('/').next().unwrap_or_default().to_string();
        StorageRoot {
            used_as: m.mount_point.to_string(),
            fstype: m.fstype.clone(),
            tree: DeviceTree {
                device: pool.clone(),
                name: pool,
                what: "ZFS pool (exported by the zfs-export hook after the unmounts; \
                               sysfs does not show its disks)"
                    .into(),
                built_on: Vec::new(),
            },
        }
    }));
    // What the shutdown closes beyond the trees above: the tops of the other stacks.
    let mut shown = BTreeSet::new();
    for r in &roots {
        collect_devices(&r.tree, &mut shown);
    }
    let unclaimed: Vec<&BlockDev> = plan
        .steps
        .iter()
        .flat_map(|s| s.closes_devices())
        .filter_map(|d| topo.devices.get(d))
        .filter(|d| !shown.contains(&d.name))
        .filter(|d| {
            !d.holders
                .iter()
                .any(|h| topo.devices.get(h).is_some_and(|h| h.is_closable()))
        })
        .collect();
    roots.extend(unclaimed.into_iter().map(|d| StorageRoot {
        used_as: NOT_MOUNTED.into(),
        fstype: String::new(),
        tree: cut_at(device_tree(topo, d), &shown),
    }));
    roots
}

/// `t` with every part already shown in another tree cut to one line saying so.
fn cut_at(mut t: DeviceTree, shown: &BTreeSet<String>) -> DeviceTree {
    t.built_on = t
        .built_on
        .into_iter()
        .map(|c| {
            if shown.contains(&c.device) {
                DeviceTree {
                    what: format!("{} (shown above)", c.what),
                    built_on: Vec::new(),
                    ..c
                }
            } else {
                cut_at(c, shown)
            }
        })
        .collect();
    t
}

fn collect_devices(t: &DeviceTree, into: &mut BTreeSet<String>) {
    into.insert(t.device.clone());
    for c in &t.built_on {
        collect_devices(c, into);
    }
}
