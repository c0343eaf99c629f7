//! Emission: the ordered nodes become steps. Each mount moved out of the way gets its
//! move before the node it makes room for, and is unmounted from where it went; devices
//! exitrd cannot close (disks, partitions, unbound loops, empty NBD slots) give no step.
//! The disks of an iSCSI session give one logout, at the place of the last of them: the
//! order puts each disk after everything on it, so that place is after everything on any
//! of them.

use super::graph::{Graph, Node};
use super::order::Order;
use super::Step;
use crate::topology::block::{portal, BlockDev, DevKind};
use crate::topology::mountinfo::MountPath;
use std::collections::BTreeMap;

pub(super) fn steps(graph: &Graph, order: Order) -> Vec<Step> {
    let topo = graph.topo;
    // Each iSCSI session's disks, in the order's order: the last one carries the logout.
    let mut sessions: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for &n in &order.nodes {
        if let Node::Device(d) = n {
            let d = graph.devices[d];
            if let DevKind::Iscsi { session, .. } = d.kind {
                sessions.entry(session).or_default().push(&d.name);
            }
        }
    }
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
            Node::Device(d) => device_step(graph.devices[d], &sessions),
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

/// One logout step for each iSCSI session in `topo`, whatever uses its disks: what the
/// runtime drops at the very end when writes still wait on a target (see
/// `teardown::iscsi::drop_session`).
pub fn iscsi_sessions(topo: &crate::topology::Topology) -> Vec<Step> {
    let mut sessions: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for d in topo.devices.values() {
        if let DevKind::Iscsi { session, .. } = d.kind {
            sessions.entry(session).or_default().push(&d.name);
        }
    }
    sessions
        .values()
        .filter_map(|disks| topo.devices.get(*disks.last()?))
        .filter_map(|d| device_step(d, &sessions))
        .collect()
}

/// The step that closes `d`; `sessions`: the disks of each iSCSI session, in order.
fn device_step(d: &BlockDev, sessions: &BTreeMap<u32, Vec<&str>>) -> Option<Step> {
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
        DevKind::Iscsi {
            session,
            target,
            address,
            port,
        } => {
            let disks = sessions.get(session)?;
            // Not the session's last disk: the logout comes later.
            if disks.last() != Some(&d.name.as_str()) {
                return None;
            }
            Some(Step::LogoutIscsi {
                device: d.name.clone(),
                other_disks: disks
                    .iter()
                    .filter(|n| **n != d.name)
                    .map(|n| n.to_string())
                    .collect(),
                session: *session,
                target: target.clone(),
                portal: portal(address.as_deref(), *port),
            })
        }
        _ => None,
    }
}
