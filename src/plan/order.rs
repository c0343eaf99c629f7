//! Ordering: a topological sort of the graph, the ranking choosing among the nodes free
//! to go. Where the sort gets stuck, a mount that something still needs sits below a
//! mount that cannot go before it: the sort breaks that edge by moving the mount out of
//! the way. Any other cycle (should never happen) is broken with a warning, so the order
//! always holds every node.

use super::graph::{Graph, Node};
use super::rank::{Rank, Ranking};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// A mount moved out of the way ([`super::Step::MoveOut`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    /// The move comes before the node at this position of [`Order::nodes`].
    pub at: usize,
    /// Index into `Topology::mounts`.
    pub mount: usize,
}

pub(super) struct Order {
    /// Every node of the graph, the first to go first.
    pub nodes: Vec<Node>,
    /// Where each moved mount (index into `Topology::mounts`) goes.
    pub moved_to: BTreeMap<usize, String>,
    /// In the order they are made.
    pub moves: Vec<Move>,
    pub warnings: Vec<String>,
}

pub(super) fn order(graph: &Graph, ranking: &Ranking) -> Order {
    let nodes = &graph.nodes;
    let topo = graph.topo;
    // The sort consumes edges and may break some: on copies, the graph stays as built.
    let mut successors = graph.successors.clone();
    let mut indegree = graph.indegree.clone();
    let ready_entry = |i: usize| -> Reverse<(Rank, usize)> { Reverse((ranking.rank(nodes[i]), i)) };
    let mut ready: BinaryHeap<Reverse<(Rank, usize)>> = BinaryHeap::new();
    ready.extend(
        (0..nodes.len())
            .filter(|&i| indegree[i] == 0)
            .map(ready_entry),
    );
    let mut order: Vec<Node> = Vec::with_capacity(nodes.len());
    let mut done = vec![false; nodes.len()];
    let mut moved_to: BTreeMap<usize, String> = BTreeMap::new();
    let mut moves: Vec<Move> = Vec::new();
    let mut warnings = Vec::new();
    loop {
        while let Some(Reverse((_, i))) = ready.pop() {
            if done[i] {
                continue;
            }
            done[i] = true;
            order.push(nodes[i]);
            for edge in &successors[i] {
                let s = edge.to;
                if done[s] {
                    continue;
                }
                indegree[s] = indegree[s].saturating_sub(1);
                if indegree[s] == 0 {
                    ready.push(ready_entry(s));
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
            if done[i] || !graph.needed[i] || moved_to.contains_key(&m) {
                continue;
            }
            let Some(k) = successors[i].iter().position(|e| e.tree && !done[e.to]) else {
                continue;
            };
            let parent = successors[i].remove(k).to;
            indegree[parent] = indegree[parent].saturating_sub(1);
            if indegree[parent] == 0 {
                ready.push(ready_entry(parent));
            }
            let to = format!(
                "{}/{}",
                graph.opts.held_dir.trim_end_matches('/'),
                topo.mounts[m].id
            );
            moved_to.insert(m, to);
            moves.push(Move {
                at: order.len(),
                mount: m,
            });
            freed = true;
        }
        // Deepest first: a mount moved after its parent would have gone along with it, and
        // its own move would find nothing at its old path.
        moves[round..].sort_by_key(|mv| {
            Reverse(
                topo.mounts[mv.mount]
                    .mount_point
                    .as_bytes()
                    .split(|&b| b == b'/')
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
            .min_by_key(|&i| ranking.rank(nodes[i]))
        else {
            break;
        };
        warnings.push(format!("dependency cycle broken at {:?}", nodes[i]));
        indegree[i] = 0;
        ready.push(ready_entry(i));
    }
    Order {
        nodes: order,
        moved_to,
        moves,
        warnings,
    }
}
