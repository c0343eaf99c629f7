//! The teardown scheduler: carries out the plan in passes, re-planning from a fresh reading
//! of the system before each pass, under one deadline.
//!
//! Rules, so that nothing loops blindly and nothing waits forever:
//! - a step that failed is tried again only after some other step succeeded since (the
//!   system changed, so it may now work); with no success in a pass, the run stops;
//! - a step that timed out is abandoned for good: its worker may be stuck in the kernel,
//!   and a second one would only get stuck beside it;
//! - each step gets at most `step_timeout`, and never more than what is left of the
//!   deadline; between passes with failures there is a short, growing, bounded pause.
//!
//! The scheduler only talks to an [`Executor`], so it is tested against a fake one.

use crate::plan::{self, PlanOptions, Step};
use crate::runtime::worker::Outcome;
use crate::topology::Topology;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub trait Executor {
    /// A fresh reading of the system, or `None` if it cannot be read.
    fn read(&mut self) -> Option<Topology>;
    /// Carries out one step within `timeout`.
    fn run(&mut self, step: &Step, topo: &Topology, timeout: Duration) -> Outcome;
    /// Time since the start of the shutdown.
    fn elapsed(&self) -> Duration;
    fn pause(&mut self, d: Duration);
    /// Called with every result, to log it.
    fn report(&mut self, step: &Step, outcome: &Outcome);
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole run must end by this much elapsed time.
    pub deadline: Duration,
    pub step_timeout: Duration,
    pub max_passes: usize,
}

#[derive(Debug, Default)]
pub struct Progress {
    /// Steps that ended with their device or mount gone: `Done`, `Dropped` or `Gone`, in
    /// order.
    pub done: Vec<Step>,
    /// Devices of `done` steps that the kernel removed itself (`Outcome::Gone`: deferred
    /// removal, autoclear) before or while the step ran: closed, but not by exitrd.
    pub gone_by_kernel: BTreeSet<String>,
    /// Last failure per step, by its description (only steps not done later).
    pub failed: BTreeMap<String, String>,
    /// Steps whose worker timed out and was abandoned.
    pub abandoned: BTreeSet<String>,
    pub out_of_time: bool,
    pub passes: usize,
}

impl Progress {
    /// Whether `step`'s device was found gone at a step of this run: gone for the rest of
    /// it, though its sysfs entry may linger a moment after the kernel's deferred removal.
    pub fn found_gone(&self, step: &Step) -> bool {
        step.closes_device()
            .is_some_and(|d| self.gone_by_kernel.contains(d))
    }
}

/// Runs the plan's steps that `which` selects until none are left, nothing changes any
/// more, or time runs out. `progress` accumulates over calls (later rounds after ending
/// spared processes keep knowing what was abandoned).
pub fn run_passes(
    ex: &mut dyn Executor,
    which: &dyn Fn(&Step) -> bool,
    opts: &PlanOptions,
    limits: Limits,
    progress: &mut Progress,
) {
    // Generation = number of successes so far; a failed step remembers the generation it
    // failed in and is skipped while that is still current.
    let mut generation = progress.done.len();
    let mut failed_in: BTreeMap<String, usize> = BTreeMap::new();
    for pass in 0..limits.max_passes {
        let Some(topo) = ex.read() else { return };
        // The plan's prefix that `which` selects, not every step it selects: a step left
        // out may be needed first by the ones after it (the plan puts every mount that
        // waits for no device before the first device step, so the unmount-only round
        // never tries the file system holding an MD bitmap or a loop file before the
        // array or loop device it serves is gone).
        let steps: Vec<Step> = plan::plan(&topo, opts)
            .steps
            .into_iter()
            .take_while(|s| which(s))
            .collect();
        if steps.is_empty() {
            return;
        }
        progress.passes += 1;
        let mut attempted = false;
        let mut any_failed = false;
        for step in steps {
            let key = step.describe();
            if progress.abandoned.contains(&key) || failed_in.get(&key) == Some(&generation) {
                continue;
            }
            // Found gone once, gone for the run: after the kernel's deferred removal its
            // sysfs entry may linger for a moment, and the next pass would try it again.
            if progress.found_gone(&step) {
                continue;
            }
            let left = limits.deadline.saturating_sub(ex.elapsed());
            if left.is_zero() {
                progress.out_of_time = true;
                return;
            }
            attempted = true;
            let outcome = ex.run(&step, &topo, left.min(limits.step_timeout));
            ex.report(&step, &outcome);
            match outcome {
                Outcome::Done | Outcome::Dropped(_) | Outcome::Gone => {
                    if let (Outcome::Gone, Some(device)) = (&outcome, step.closes_device()) {
                        progress.gone_by_kernel.insert(device.to_string());
                    }
                    generation += 1;
                    progress.failed.remove(&key);
                    failed_in.remove(&key);
                    progress.done.push(step);
                }
                Outcome::TimedOut => {
                    progress.failed.insert(key.clone(), outcome.to_string());
                    progress.abandoned.insert(key);
                    any_failed = true;
                }
                Outcome::Failed(e) => {
                    progress.failed.insert(key.clone(), e.to_string());
                    failed_in.insert(key, generation);
                    any_failed = true;
                }
            }
        }
        if !attempted {
            return;
        }
        if any_failed {
            let backoff = Duration::from_millis(50u64 << pass.min(4)).min(Duration::from_secs(1));
            let left = limits.deadline.saturating_sub(ex.elapsed());
            ex.pause(backoff.min(left));
        }
    }
}

#[cfg(test)]
mod tests;
