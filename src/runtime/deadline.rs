//! The one deadline of a shutdown run. Every wait (the first sync, the kill grace, each
//! step, hooks, forced unmounts) takes at most what is left of it; the last-resort acts
//! that must run even when time is up (suspending what is left, wiping keys, the final
//! sync) share a fixed reserve after it, so that the whole run stays inside systemd's
//! `--timeout` (the budget is that timeout less the reserve, see `runtime::arguments::budget`).

use std::time::{Duration, Instant};

/// After the deadline: time for the last-resort acts and the final sync.
pub const RESERVE: Duration = Duration::from_secs(5);
/// The least a last-resort act gets, however late: a try is better than none.
const LAST_RESORT_FLOOR: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn new(start: Instant, budget: Duration) -> Self {
        Deadline { start, budget }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// What is left before the deadline.
    pub fn left(&self) -> Duration {
        self.budget.saturating_sub(self.elapsed())
    }

    pub fn passed(&self) -> bool {
        self.left().is_zero()
    }

    /// `want`, but no more than what is left.
    pub fn cap(&self, want: Duration) -> Duration {
        want.min(self.left())
    }

    /// `want` for a last-resort act: no more than what is left of the deadline and its
    /// reserve, but at least a short try (or `want`, if that is shorter).
    pub fn cap_last_resort(&self, want: Duration) -> Duration {
        let left = (self.budget + RESERVE).saturating_sub(self.elapsed());
        want.min(left).max(LAST_RESORT_FLOOR.min(want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started_ago(secs: u64, budget: u64) -> Deadline {
        Deadline::new(
            Instant::now() - Duration::from_secs(secs),
            Duration::from_secs(budget),
        )
    }

    #[test]
    fn waits_are_cut_to_what_is_left() {
        let d = started_ago(50, 60);
        assert!(d.left() <= Duration::from_secs(10) && d.left() > Duration::from_secs(9));
        assert!(d.cap(Duration::from_secs(30)) <= Duration::from_secs(10));
        assert_eq!(d.cap(Duration::from_secs(2)), Duration::from_secs(2));
        assert!(!d.passed());
    }

    #[test]
    fn past_the_deadline_only_the_reserve_is_left() {
        let d = started_ago(62, 60);
        assert!(d.passed());
        assert_eq!(d.cap(Duration::from_secs(30)), Duration::ZERO);
        // 3 s of the 5 s reserve are left.
        let last = d.cap_last_resort(Duration::from_secs(10));
        assert!(
            last <= Duration::from_secs(3) && last > Duration::from_secs(2),
            "{last:?}"
        );
        // Beyond the reserve, a short try still.
        let late = started_ago(600, 60);
        assert_eq!(
            late.cap_last_resort(Duration::from_secs(10)),
            LAST_RESORT_FLOOR
        );
        assert_eq!(
            late.cap_last_resort(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
