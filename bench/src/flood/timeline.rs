//! The benchmark's phases (quiet, flood, recovery) as windows of time,
//! laid out from the moment the normal clients are ready.

use std::time::Duration;

use tokio::time::Instant;

use super::Plan;

#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

impl Window {
    pub(super) fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    pub(super) fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// The phases as instants, from the moment the normal clients are ready.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeline {
    pub(super) quiet: Window,
    /// When the flood sockets start connecting; they stop at `flood.end`.
    pub(super) flood_starts: Instant,
    pub(super) flood: Window,
    pub(super) recovery: Window,
}

impl Timeline {
    pub(super) fn from(ready: Instant, plan: &Plan) -> Self {
        let quiet_start = ready + plan.settle;
        let quiet = Window {
            start: quiet_start,
            end: quiet_start + plan.quiet,
        };
        let flood_starts = quiet.end;
        let flood = Window {
            start: flood_starts + plan.ramp,
            end: flood_starts + plan.ramp + plan.flood,
        };
        let recovery = Window {
            start: flood.end + plan.gap,
            end: flood.end + plan.gap + plan.recovery,
        };
        Self {
            quiet,
            flood_starts,
            flood,
            recovery,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_each_other() {
        let plan = Plan::new(true);
        let ready = Instant::now();
        let t = Timeline::from(ready, &plan);
        assert!(t.quiet.start >= ready + plan.settle);
        assert_eq!(t.flood_starts, t.quiet.end);
        assert_eq!(t.flood.start, t.flood_starts + plan.ramp);
        assert!(t.recovery.start > t.flood.end);
        assert_eq!(t.flood.length(), plan.flood);
    }
}
