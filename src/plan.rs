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
//! (DM, MD, bound loop, connected NBD) become steps; disks and partitions are only passed
//! through.

use crate::topology::block::{BlockDev, DevKind, DmKind};
use crate::topology::Topology;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    /// Move a mount out of the old root because something below the old root's own
    /// mount still needs it: the medium holding a live system's squashfs, the file
    /// system of an MD array's external bitmap, an overlay's layers. It is unmounted
    /// from its new place once what needs it is gone.
    MoveOut {
        mount_point: String,
        to: String,
    },
    SwapOff {
        path: String,
        device: Option<String>,
    },
    Unmount {
        mount_point: String,
        fstype: String,
        source: String,
        device: Option<String>,
    },
    RemoveDm {
        device: String,
        name: String,
        kind: DmKind,
    },
    StopMd {
        device: String,
        level: String,
    },
    DetachLoop {
        device: String,
        backing_file: String,
    },
    /// Disconnect a network block device from its server, after its last user is gone
    /// (the network is still up: nothing before this step touches it).
    DisconnectNbd {
        device: String,
    },
}

impl Step {
    /// One line for humans: what will be done to what.
    pub fn describe(&self) -> String {
        match self {
            Step::MoveOut { mount_point, to } => {
                format!("move {mount_point} out of the way to {to} (still needed)")
            }
            Step::SwapOff { path, .. } => format!("swapoff {path}"),
            Step::Unmount {
                mount_point,
                fstype,
                source,
                ..
            } => format!("unmount {mount_point} ({fstype} on {source})"),
            Step::RemoveDm { device, name, kind } => match kind {
                DmKind::Lvm => format!("remove LVM volume {name} ({device})"),
                DmKind::Crypt => {
                    format!("close dm-crypt mapping {name} ({device}) and free its key")
                }
                DmKind::Other => format!("remove device-mapper device {name} ({device})"),
            },
            Step::StopMd { device, level } => format!("stop MD array {device} ({level})"),
            Step::DetachLoop {
                device,
                backing_file,
            } => format!("detach loop device {device} from {backing_file}"),
            Step::DisconnectNbd { device } => {
                format!("disconnect network block device {device}")
            }
        }
    }

    /// The same line in the past tense, logged once the step is done. The VM tests match
    /// these lines whole: a change of wording is a change of the tests.
    pub fn describe_done(&self) -> String {
        match self {
            Step::MoveOut { mount_point, to } => {
                format!("moved {mount_point} to {to}: still needed")
            }
            Step::SwapOff { path, .. } => format!("swapoff {path}"),
            Step::Unmount {
                mount_point,
                fstype,
                source,
                ..
            } => format!("unmounted {mount_point} ({fstype} on {source})"),
            Step::RemoveDm { device, name, kind } => match kind {
                DmKind::Lvm => format!("removed LVM volume {name} ({device})"),
                DmKind::Crypt => {
                    format!("closed dm-crypt mapping {name} ({device}): key wiped from memory")
                }
                DmKind::Other => format!("removed device-mapper device {name} ({device})"),
            },
            Step::StopMd { device, level } => format!("stopped MD array {device} ({level})"),
            Step::DetachLoop {
                device,
                backing_file,
            } => format!("detached loop device {device} from {backing_file}"),
            Step::DisconnectNbd { device } => {
                format!("disconnected network block device {device}")
            }
        }
    }

    /// The kernel block device this step closes, if it closes one.
    pub fn closes_device(&self) -> Option<&str> {
        match self {
            Step::RemoveDm { device, .. }
            | Step::StopMd { device, .. }
            | Step::DetachLoop { device, .. }
            | Step::DisconnectNbd { device } => Some(device),
            Step::MoveOut { .. } | Step::SwapOff { .. } | Step::Unmount { .. } => None,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Swap(usize),
    Mount(usize),
    Device(usize),
}

pub fn in_scope(path: &str, scope: &str) -> bool {
    let scope = scope.trim_end_matches('/');
    scope.is_empty() || path == scope || path.starts_with(&format!("{scope}/"))
}

/// The mount (index into `mounts`, restricted to `candidates`) holding `path`: the one
/// with the longest mount point that is a prefix of it.
fn mount_holding(topo: &Topology, candidates: &[usize], path: &str) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&i| in_scope(path, &topo.mounts[i].mount_point))
        .max_by_key(|&i| (topo.mounts[i].mount_point.len(), topo.mounts[i].id))
}

/// The directories an overlay mount is built from (`lowerdir`, `upperdir`, `workdir`,
/// and the `lowerdir+`/`datadir+` forms), from its super options. Commas and colons
/// inside paths are backslash-escaped there.
pub fn overlay_layers(super_options: &str) -> Vec<String> {
    // Splits on unescaped `sep`; `unescape` drops the backslashes (last pass only).
    fn split(text: &str, sep: char, unescape: bool) -> Vec<String> {
        let mut parts = Vec::new();
        let mut part = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if !unescape {
                        part.push(c);
                    }
                    part.extend(chars.next());
                }
                c if c == sep => parts.push(std::mem::take(&mut part)),
                c => part.push(c),
            }
        }
        parts.push(part);
        parts
    }
    let mut layers = Vec::new();
    for opt in split(super_options, ',', false) {
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        match key {
            "lowerdir" => layers.extend(
                split(value, ':', true)
                    .into_iter()
                    .filter(|l| !l.is_empty()),
            ),
            "upperdir" | "workdir" | "lowerdir+" | "datadir+" => {
                layers.extend(split(value, '\0', true))
            }
            _ => {}
        }
    }
    layers
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
    let mounts = mounts_in_scope(topo, opts);
    let devices: Vec<&BlockDev> = topo.devices.values().collect();
    let device_index: BTreeMap<&str, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();

    let mut nodes: Vec<Node> = Vec::new();
    nodes.extend((0..topo.swaps.len()).map(Node::Swap));
    nodes.extend(mounts.iter().map(|&i| Node::Mount(i)));
    nodes.extend((0..devices.len()).map(Node::Device));
    let node_index: BTreeMap<Node, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // A tree edge (child mount before parent mount) is the one kind of edge that can be
    // broken: by moving the child out of the way (Step::MoveOut).
    let mut successors: Vec<Vec<(usize, bool)>> = vec![Vec::new(); nodes.len()];
    let mut indegree = vec![0usize; nodes.len()];
    let mut needed = vec![false; nodes.len()];
    let mut edge = |a: Node, b: Node, tree: bool| {
        if let (Some(&a), Some(&b)) = (node_index.get(&a), node_index.get(&b)) {
            if a != b {
                successors[a].push((b, tree));
                indegree[b] += 1;
                if !tree {
                    needed[b] = true;
                }
            }
        }
    };
    let dev_node = |name: &str| device_index.get(name).map(|&i| Node::Device(i));
    let mount_by_id: BTreeMap<u32, usize> =
        mounts.iter().map(|&i| (topo.mounts[i].id, i)).collect();
    // Paths recorded when something was set up may predate the pivot: inside the
    // exitrd, look below the old root first.
    let holding = |path: &str| -> Option<usize> {
        if in_scope(path, &opts.scope) {
            mount_holding(topo, &mounts, path)
        } else {
            let below = format!("{}{path}", opts.scope.trim_end_matches('/'));
            mount_holding(topo, &mounts, &below).or_else(|| mount_holding(topo, &mounts, path))
        }
    };

    for &i in &mounts {
        let m = &topo.mounts[i];
        if let Some(&p) = mount_by_id.get(&m.parent) {
            edge(Node::Mount(i), Node::Mount(p), true);
        }
        if let Some(d) = topo
            .device_by_number(m.major, m.minor)
            .filter(|_| m.is_block_backed())
        {
            if let Some(n) = dev_node(&d.name) {
                edge(Node::Mount(i), n, false);
            }
        }
        if m.fstype == "overlay" {
            for layer in overlay_layers(&m.super_options) {
                if let Some(l) = holding(&layer).filter(|&l| l != i) {
                    edge(Node::Mount(i), Node::Mount(l), false);
                }
            }
        }
    }
    for (s, swap) in topo.swaps.iter().enumerate() {
        match topo.device_by_path(&swap.path) {
            Some(d) => {
                if let Some(n) = dev_node(&d.name) {
                    edge(Node::Swap(s), n, false);
                }
            }
            None => {
                if let Some(m) = mount_holding(topo, &mounts, &swap.path) {
                    edge(Node::Swap(s), Node::Mount(m), false);
                }
            }
        }
    }
    for (i, d) in devices.iter().enumerate() {
        for h in &d.holders {
            if let Some(n) = dev_node(h) {
                edge(n, Node::Device(i), false);
            }
        }
        match &d.kind {
            DevKind::Partition {
                parent: Some(parent),
            } => {
                if let Some(n) = dev_node(parent) {
                    edge(Node::Device(i), n, false);
                }
            }
            DevKind::Loop {
                backing_file: Some(file),
            } => {
                let backing = holding(file);
                if let Some(m) = backing {
                    edge(Node::Device(i), Node::Mount(m), false);
                }
                // An overlay keeps private references to its layers, so a layer's mount
                // can be gone while its file system still uses the device: systemd
                // unmounts a live system's /run/live/rootfs/filesystem.squashfs at
                // shutdown, and loop0 then has no user in sight. Such a loop device goes
                // after the overlays (unless one of them holds its backing file).
                let user_in_sight = !d.holders.is_empty()
                    || topo
                        .mounts
                        .iter()
                        .any(|m| m.is_block_backed() && (m.major, m.minor) == (d.major, d.minor))
                    || topo.swaps.iter().any(|s| {
                        topo.device_by_path(&s.path)
                            .is_some_and(|x| x.name == d.name)
                    });
                if !user_in_sight {
                    for &o in &mounts {
                        if topo.mounts[o].fstype == "overlay" && Some(o) != backing {
                            edge(Node::Mount(o), Node::Device(i), false);
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(file) = topo.md_bitmap_files.get(&d.name) {
            if let Some(m) = holding(file) {
                edge(Node::Device(i), Node::Mount(m), false);
            }
        }
    }

    // Readability ranks: devices are numbered stack by stack, walking down from each
    // mounted device in unmount order, so one stack's steps stay together.
    let mut device_rank: Vec<Option<usize>> = vec![None; devices.len()];
    let mut next_rank = 0;
    let mut mounts_deepest_first = mounts.clone();
    mounts_deepest_first.reverse();
    let mut stack: Vec<usize> = Vec::new();
    let tops = mounts_deepest_first
        .iter()
        .filter_map(|&i| {
            let m = &topo.mounts[i];
            topo.device_by_number(m.major, m.minor)
                .filter(|_| m.is_block_backed())
        })
        .chain(
            topo.swaps
                .iter()
                .filter_map(|s| topo.device_by_path(&s.path)),
        )
        .chain(devices.iter().copied());
    for top in tops {
        stack.push(device_index[top.name.as_str()]);
        while let Some(d) = stack.pop() {
            if device_rank[d].is_some() {
                continue;
            }
            device_rank[d] = Some(next_rank);
            next_rank += 1;
            for s in devices[d].slaves.iter().rev() {
                if let Some(&j) = device_index.get(s.as_str()) {
                    stack.push(j);
                }
            }
        }
    }
    let priority = |n: Node| -> (u8, usize) {
        match n {
            Node::Swap(s) => (0, s),
            // Later mounts sit on earlier ones: reverse mountinfo order.
            Node::Mount(i) => (1, topo.mounts.len() - i),
            Node::Device(d) => (2, device_rank[d].unwrap_or(usize::MAX)),
        }
    };

    let mut ready: BinaryHeap<Reverse<((u8, usize), usize)>> = BinaryHeap::new();
    for (i, &n) in nodes.iter().enumerate() {
        if indegree[i] == 0 {
            ready.push(Reverse((priority(n), i)));
        }
    }
    let mut order: Vec<Node> = Vec::with_capacity(nodes.len());
    let mut done = vec![false; nodes.len()];
    let mut moved_to: BTreeMap<usize, String> = BTreeMap::new();
    let mut moves: Vec<(usize, usize)> = Vec::new(); // (position in order, mount index)
    let mut warnings = Vec::new();
    loop {
        while let Some(Reverse((_, i))) = ready.pop() {
            if done[i] {
                continue;
            }
            done[i] = true;
            order.push(nodes[i]);
            for &(s, _) in &successors[i] {
                if done[s] {
                    continue;
                }
                indegree[s] = indegree[s].saturating_sub(1);
                if indegree[s] == 0 {
                    ready.push(Reverse((priority(nodes[s]), s)));
                }
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        // Stuck: a mount that something still needs sits below a mount that cannot go
        // before it. Move every such mount out of the way, which frees its parent.
        let mut freed = false;
        let round = moves.len();
        for i in 0..nodes.len() {
            let Node::Mount(m) = nodes[i] else { continue };
            if done[i] || !needed[i] || moved_to.contains_key(&i) {
                continue;
            }
            let Some(k) = successors[i].iter().position(|&(p, tree)| tree && !done[p]) else {
                continue;
            };
            let (parent, _) = successors[i].remove(k);
            indegree[parent] = indegree[parent].saturating_sub(1);
            if indegree[parent] == 0 {
                ready.push(Reverse((priority(nodes[parent]), parent)));
            }
            let to = format!(
                "{}/{}",
                opts.held_dir.trim_end_matches('/'),
                topo.mounts[m].id
            );
            moved_to.insert(i, to);
            moves.push((order.len(), m));
            freed = true;
        }
        // Deepest first: a mount moved after its parent would have gone along with it, and
        // its own move would find nothing at its old path.
        moves[round..].sort_by_key(|&(_, m)| {
            Reverse(
                topo.mounts[m]
                    .mount_point
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .count(),
            )
        });
        if freed {
            continue;
        }
        // A cycle without such a mount (should never happen): release the most urgent
        // node and go on, so the plan is always complete.
        let Some(i) = (0..nodes.len())
            .filter(|&i| !done[i])
            .min_by_key(|&i| priority(nodes[i]))
        else {
            break;
        };
        warnings.push(format!("dependency cycle broken at {:?}", nodes[i]));
        indegree[i] = 0;
        ready.push(Reverse((priority(nodes[i]), i)));
    }
    let moved_path = |m: usize| -> Option<String> {
        node_index
            .get(&Node::Mount(m))
            .and_then(|i| moved_to.get(i))
            .cloned()
    };

    let node_step = |n: Node| -> Option<Step> {
        match n {
            Node::Swap(s) => {
                let swap = &topo.swaps[s];
                Some(Step::SwapOff {
                    path: swap.path.clone(),
                    device: topo.device_by_path(&swap.path).map(|d| d.name.clone()),
                })
            }
            Node::Mount(i) => {
                let m = &topo.mounts[i];
                Some(Step::Unmount {
                    mount_point: moved_path(i).unwrap_or_else(|| m.mount_point.clone()),
                    fstype: m.fstype.clone(),
                    source: m.source.clone(),
                    device: topo
                        .device_by_number(m.major, m.minor)
                        .filter(|_| m.is_block_backed())
                        .map(|d| d.name.clone()),
                })
            }
            Node::Device(d) => device_step(devices[d]),
        }
    };
    let mut steps = Vec::new();
    let mut pending_moves = moves.into_iter().peekable();
    for (pos, n) in order.into_iter().enumerate() {
        while let Some((_, m)) = pending_moves.next_if(|&(at, _)| at <= pos) {
            steps.push(Step::MoveOut {
                mount_point: topo.mounts[m].mount_point.clone(),
                to: moved_path(m).unwrap_or_default(),
            });
        }
        steps.extend(node_step(n));
    }
    Plan {
        scope: opts.scope.clone(),
        steps,
        warnings,
    }
}

fn device_step(d: &BlockDev) -> Option<Step> {
    match &d.kind {
        DevKind::Dm { name, kind, .. } => Some(Step::RemoveDm {
            device: d.name.clone(),
            name: if name.is_empty() {
                d.name.clone()
            } else {
                name.clone()
            },
            kind: *kind,
        }),
        DevKind::Md { level } => Some(Step::StopMd {
            device: d.name.clone(),
            level: level.clone(),
        }),
        DevKind::Loop {
            backing_file: Some(file),
        } => Some(Step::DetachLoop {
            device: d.name.clone(),
            backing_file: file.clone(),
        }),
        DevKind::Nbd { connected: true } => Some(Step::DisconnectNbd {
            device: d.name.clone(),
        }),
        _ => None,
    }
}

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
const MAX_TREE_NODES: usize = 1000;

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
                used_as: m.mount_point.clone(),
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
            used_as: m.mount_point.clone(),
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
        .filter_map(|s| s.closes_device())
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

#[cfg(test)]
mod tests;
