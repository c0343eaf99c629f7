//! Ranking: among the nodes that are free to go, which goes first. The graph decides what
//! must come before what; the ranks only make the plan read well: swaps, then mounts
//! deepest first, then devices top-down, one storage stack after the other.

use super::graph::{Graph, Node};

/// A node's place among the free ones: lower goes first.
pub(super) type Rank = (u8, usize);

pub(super) struct Ranking {
    /// Devices are numbered stack by stack, walking down from each mounted device in
    /// unmount order, so one stack's steps stay together. Indexed like `Graph::devices`.
    device_rank: Vec<Option<usize>>,
    mount_count: usize,
}

impl Ranking {
    pub fn of(graph: &Graph) -> Ranking {
        let topo = graph.topo;
        let devices = &graph.devices;
        let mut device_rank: Vec<Option<usize>> = vec![None; devices.len()];
        let mut next_rank = 0;
        let mut mounts_deepest_first = graph.mounts.clone();
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
            stack.push(graph.device_index[top.name.as_str()]);
            while let Some(d) = stack.pop() {
                if device_rank[d].is_some() {
                    continue;
                }
                device_rank[d] = Some(next_rank);
                next_rank += 1;
                for s in devices[d].slaves.iter().rev() {
                    if let Some(&j) = graph.device_index.get(s.as_str()) {
                        stack.push(j);
                    }
                }
            }
        }
        Ranking {
            device_rank,
            mount_count: topo.mounts.len(),
        }
    }

    pub fn rank(&self, n: Node) -> Rank {
        match n {
            Node::Swap(s) => (0, s),
            // Later mounts sit on earlier ones: reverse mountinfo order.
            Node::Mount(i) => (1, self.mount_count - i),
            Node::Device(d) => (2, self.device_rank[d].unwrap_or(usize::MAX)),
        }
    }
}
