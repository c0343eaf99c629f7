//! The planner: from a [`Topology`] to the ordered teardown steps. Pure: no I/O.
//!
//! Everything to take down is a node in one dependency graph: swaps, mounts and block
//! devices. An edge `a -> b` means "a must be gone before b can go":
//! - a mount before the mount it sits on (parent mount id), and before its source device;
//! - a swap before its device, or before the mount holding its swap file;
//! - a device before the devices it is built on (sysfs `holders/`), a partition before its
//!   disk;
//! - a loop device before the mount holding its backing file (live systems: the squashfs
//!   loop goes before the boot medium is unmounted).
//!
//! A topological sort of that graph is the plan. Ties are broken for readability: swaps,
//! then mounts deepest first, then devices top-down stack by stack. Only closable devices
//! (DM, MD, bound loop, connected NBD, the disks of an iSCSI session: one logout for them
//! all) become steps; other disks and partitions are only passed through.
//!
//! The parts, in the order `plan` uses them: `graph` builds the graph, `rank` ranks the
//! nodes, `order` sorts them, `emit` turns them into [`Step`]s (whose wording is in
//! `step`). The storage tree of `exitrd plan` is in `tree`.

mod emit;
mod graph;
mod order;
mod rank;
mod step;
mod tree;

pub use emit::iscsi_sessions;
pub use graph::overlay_layers;
pub use step::Step;
pub use tree::{storage_roots, DeviceTree, StorageRoot, NOT_MOUNTED};

use crate::topology::Topology;
use serde::Serialize;

/// File systems that are kernel interfaces or memory, shown only at shutdown where all of
/// `/oldroot` has to go; on a live system they would bury the storage stack in noise.
const API_FSTYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Only mounts at or below this path are taken down: `/` for the live view,
    /// `/oldroot` inside the exitrd.
    pub scope: String,
    /// Leave out API and memory file systems (the live view).
    pub skip_api_mounts: bool,
    /// Where mounts that must outlive their parent are moved to (see [`Step::MoveOut`]);
    /// mounts there are in scope too.
    pub held_dir: String,
}

/// Inside the exitrd: a directory of its own tmpfs root.
pub const HELD_DIR: &str = "/exitrd-held";

impl PlanOptions {
    pub fn live() -> Self {
        PlanOptions {
            scope: "/".into(),
            skip_api_mounts: true,
            held_dir: HELD_DIR.into(),
        }
    }

    pub fn shutdown() -> Self {
        PlanOptions {
            scope: "/oldroot".into(),
            skip_api_mounts: false,
            held_dir: HELD_DIR.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub scope: String,
    pub steps: Vec<Step>,
    /// Set when the graph had a cycle (should never happen); the steps are still complete.
    pub warnings: Vec<String>,
}

/// Whether `path` is `scope` or below it. On bytes: mount points need not be UTF-8.
pub fn in_scope(path: impl AsRef<[u8]>, scope: impl AsRef<[u8]>) -> bool {
    let (path, mut scope) = (path.as_ref(), scope.as_ref());
    while let Some(shorter) = scope.strip_suffix(b"/") {
        scope = shorter;
    }
    scope.is_empty()
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// The mounts the plan takes down, in mountinfo order.
pub fn mounts_in_scope(topo: &Topology, opts: &PlanOptions) -> Vec<usize> {
    topo.mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            in_scope(&m.mount_point, &opts.scope) || in_scope(&m.mount_point, &opts.held_dir)
        })
        .filter(|(_, m)| !(opts.skip_api_mounts && API_FSTYPES.contains(&m.fstype.as_str())))
        .map(|(i, _)| i)
        .collect()
}

pub fn plan(topo: &Topology, opts: &PlanOptions) -> Plan {
    let graph = graph::Graph::build(topo, opts);
    let ranking = rank::Ranking::of(&graph);
    let mut order = order::order(&graph, &ranking);
    let warnings = std::mem::take(&mut order.warnings);
    Plan {
        scope: opts.scope.clone(),
        steps: emit::steps(&graph, order),
        warnings,
    }
}

#[cfg(test)]
mod tests;
