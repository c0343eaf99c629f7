//! Emission: the ordered nodes become steps. Each mount moved out of the way gets its
//! move before the node it makes room for, and is unmounted from where it went; devices
//! exitrd cannot close (disks, partitions, unbound loops, empty NBD slots) give no step.

use super::graph::{Graph, Node};
use super::order::Order;
use super::Step;
use crate::topology::block::{BlockDev, DevKind};
use crate::topology::mountinfo::MountPath;

pub(super) fn steps(graph: &Graph, order: Order) -> Vec<Step> {
    let topo = graph.topo;
    let moved_path = |m: usize| -> Option<String> { order.moved_to.get(&m).cloned() };
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
                    mount_point: moved_path(i)
                        .map(MountPath::from)
                        .unwrap_or_else(|| m.mount_point.clone()),
                    fstype: m.fstype.clone(),
                    source: m.source.clone(),
                    device: topo
                        .device_by_number(m.major, m.minor)
                        .filter(|_| m.is_block_backed())
                        .map(|d| d.name.clone()),
                })
            }
            Node::Device(d) => device_step(graph.devices[d]),
        }
    };
    let mut steps = Vec::new();
    let mut pending_moves = order.moves.iter().peekable();
    for (pos, &n) in order.nodes.iter().enumerate() {
        while let Some(mv) = pending_moves.next_if(|mv| mv.at <= pos) {
            steps.push(Step::MoveOut {
                mount_point: topo.mounts[mv.mount].mount_point.clone(),
                to: moved_path(mv.mount).unwrap_or_default(),
            });
        }
        steps.extend(node_step(n));
    }
    steps
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
