//! The dependency graph: a node for every swap, every mount in scope and every block
//! device, and an edge `a -> b` wherever a must be gone before b can go (the list of
//! rules is in the [module documentation](super)).

use super::{in_scope, mounts_in_scope, PlanOptions};
use crate::topology::block::{BlockDev, DevKind};
use crate::topology::Topology;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Node {
    /// Index into `Topology::swaps`.
    Swap(usize),
    /// Index into `Topology::mounts`.
    Mount(usize),
    /// Index into [`Graph::devices`].
    Device(usize),
}

/// `a -> to`: the node `to` can go only once `a` is gone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    pub to: usize,
    /// A child mount before its parent: the one kind of edge that can be broken, by
    /// moving the child out of the way ([`super::Step::MoveOut`]).
    pub tree: bool,
}

/// The graph, and the indices its nodes refer to.
pub(super) struct Graph<'t> {
    pub topo: &'t Topology,
    pub opts: &'t PlanOptions,
    /// The mounts in scope, as indices into `topo.mounts`, in mountinfo order.
    pub mounts: Vec<usize>,
    /// Every block device, in kernel-name order.
    pub devices: Vec<&'t BlockDev>,
    pub device_index: BTreeMap<&'t str, usize>,
    /// Swaps, then mounts, then devices; the node numbers below are indices into this.
    pub nodes: Vec<Node>,
    pub node_index: BTreeMap<Node, usize>,
    pub successors: Vec<Vec<Edge>>,
    /// How many edges lead into each node.
    pub indegree: Vec<usize>,
    /// Whether something other than a child mount waits for the node: such a mount, if
    /// it sits on a mount that cannot go first, is moved out instead of left stuck.
    pub needed: Vec<bool>,
}

impl<'t> Graph<'t> {
    pub fn build(topo: &'t Topology, opts: &'t PlanOptions) -> Graph<'t> {
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
        let mut graph = Graph {
            topo,
            opts,
            successors: vec![Vec::new(); nodes.len()],
            indegree: vec![0; nodes.len()],
            needed: vec![false; nodes.len()],
            mounts,
            devices,
            device_index,
            nodes,
            node_index,
        };
        graph.add_mount_edges();
        graph.add_swap_edges();
        graph.add_device_edges();
        graph
    }

    /// Adds `a -> b`; a node outside the graph (a mount out of scope) adds nothing.
    fn edge(&mut self, a: Node, b: Node, tree: bool) {
        if let (Some(&a), Some(&b)) = (self.node_index.get(&a), self.node_index.get(&b)) {
            if a != b {
                self.successors[a].push(Edge { to: b, tree });
                self.indegree[b] += 1;
                if !tree {
                    self.needed[b] = true;
                }
            }
        }
    }

    fn dev_node(&self, name: &str) -> Option<Node> {
        self.device_index.get(name).map(|&i| Node::Device(i))
    }

    /// The mount in scope holding `path`. Paths recorded when something was set up may
    /// predate the pivot: inside the exitrd, look below the old root first.
    fn holding(&self, path: &str) -> Option<usize> {
        let (topo, mounts, scope) = (self.topo, &self.mounts, &self.opts.scope);
        if in_scope(path, scope) {
            mount_holding(topo, mounts, path)
        } else {
            let below = format!("{}{path}", scope.trim_end_matches('/'));
            mount_holding(topo, mounts, &below).or_else(|| mount_holding(topo, mounts, path))
        }
    }

    /// A mount before the mount it sits on, its device, and an overlay's layers.
    fn add_mount_edges(&mut self) {
        let topo = self.topo;
        let mount_by_id: BTreeMap<u32, usize> = self
            .mounts
            .iter()
            .map(|&i| (topo.mounts[i].id, i))
            .collect();
        for i in self.mounts.clone() {
            let m = &topo.mounts[i];
            if let Some(&p) = mount_by_id.get(&m.parent) {
                self.edge(Node::Mount(i), Node::Mount(p), true);
            }
            if let Some(d) = topo
                .device_by_number(m.major, m.minor)
                .filter(|_| m.is_block_backed())
            {
                if let Some(n) = self.dev_node(&d.name) {
                    self.edge(Node::Mount(i), n, false);
                }
            }
            if m.fstype == "overlay" {
                for layer in overlay_layers(&m.super_options) {
                    if let Some(l) = self.holding(&layer).filter(|&l| l != i) {
                        self.edge(Node::Mount(i), Node::Mount(l), false);
                    }
                }
            }
        }
    }

    /// A swap before its device, or before the mount holding its file.
    fn add_swap_edges(&mut self) {
        let topo = self.topo;
        for (s, swap) in topo.swaps.iter().enumerate() {
            match topo.device_by_path(&swap.path) {
                Some(d) => {
                    if let Some(n) = self.dev_node(&d.name) {
                        self.edge(Node::Swap(s), n, false);
                    }
                }
                None => {
                    if let Some(m) = mount_holding(topo, &self.mounts, &swap.path) {
                        self.edge(Node::Swap(s), Node::Mount(m), false);
                    }
                }
            }
        }
    }

    /// A device before what it is built on, a loop device before the mount holding its
    /// file, an MD array before the mount holding its bitmap file.
    fn add_device_edges(&mut self) {
        let topo = self.topo;
        for (i, d) in self.devices.clone().into_iter().enumerate() {
            for h in &d.holders {
                if let Some(n) = self.dev_node(h) {
                    self.edge(n, Node::Device(i), false);
                }
            }
            match &d.kind {
                DevKind::Partition {
                    parent: Some(parent),
                } => {
                    if let Some(n) = self.dev_node(parent) {
                        self.edge(Node::Device(i), n, false);
                    }
                }
                DevKind::Loop {
                    backing_file: Some(file),
                } => {
                    // A path that leads nowhere (its file system detached) names no
                    // mount that holds the file.
                    let backing = if topo.unreachable_loop_files.contains(&d.name) {
                        None
                    } else {
                        self.holding(file)
                    };
                    if let Some(m) = backing {
                        self.edge(Node::Device(i), Node::Mount(m), false);
                    }
                    // An overlay keeps private references to its layers, so a layer's
                    // mount can be gone while its file system still uses the device:
                    // systemd unmounts a live system's /run/live/rootfs/filesystem.squashfs
                    // at shutdown, and loop0 then has no user in sight. Such a loop device
                    // goes after the overlays (unless one of them holds its backing file).
                    let user_in_sight = !d.holders.is_empty()
                        || topo.mounts.iter().any(|m| {
                            m.is_block_backed() && (m.major, m.minor) == (d.major, d.minor)
                        })
                        || topo.swaps.iter().any(|s| {
                            topo.device_by_path(&s.path)
                                .is_some_and(|x| x.name == d.name)
                        });
                    if !user_in_sight {
                        for o in self.mounts.clone() {
                            if topo.mounts[o].fstype == "overlay" && Some(o) != backing {
                                self.edge(Node::Mount(o), Node::Device(i), false);
                            }
                        }
                    }
                }
                _ => {}
            }
            if let Some(file) = topo.md_bitmap_files.get(&d.name) {
                if let Some(m) = self.holding(file) {
                    self.edge(Node::Device(i), Node::Mount(m), false);
                }
            }
        }
    }
}

/// The mount (index into `mounts`, restricted to `candidates`) holding `path`: the one
/// with the longest mount point that is a prefix of it.
fn mount_holding(topo: &Topology, candidates: &[usize], path: &str) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&i| in_scope(path, &topo.mounts[i].mount_point))
        .max_by_key(|&i| {
            let m = &topo.mounts[i];
            (m.mount_point.as_bytes().len(), m.id)
        })
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
