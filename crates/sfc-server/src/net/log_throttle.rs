//! "At most one log line per interval, with the number of events since the last line":
//! the rule the accept loops ([`super::accept_errors`]) and the refusal log
//! ([`super::refusals`], one per address and reason) share, so that a flood of events is
//! a line every interval rather than a flood of lines.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A [`LineThrottle`] shared between tasks, with its interval: one log line's state.
#[derive(Debug)]
pub(crate) struct SharedLine {
    line: Mutex<LineThrottle>,
    interval: Duration,
}

impl SharedLine {
    pub(crate) fn new(interval: Duration) -> Self {
        SharedLine {
            line: Mutex::default(),
            interval,
        }
    }

    /// [`LineThrottle::count`] now.
    pub(crate) fn count(&self) -> Option<u64> {
        self.lock().count(Instant::now(), self.interval)
    }

    /// [`LineThrottle::held_back`] now: the events no line reported yet, once the interval
    /// has passed (with `all`, whenever there are any: at shutdown).
    pub(crate) fn held_back(&self, all: bool) -> Option<u64> {
        self.lock().held_back(Instant::now(), self.interval, all)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LineThrottle> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state of one such line.
#[derive(Debug, Default)]
pub(crate) struct LineThrottle {
    /// When the last line was logged (`None`: never).
    logged_at: Option<Instant>,
    /// Events since that line.
    unlogged: u64,
}

impl LineThrottle {
    /// Counts one event; returns the number the line due now reports (this event
    /// included), or `None` when the last line is more recent than `interval`.
    pub(crate) fn count(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        self.unlogged += 1;
        if !self.interval_passed(now, interval) {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// The events held back, if there are any and `interval` has passed since the last
    /// line (with `all`, whenever there are any: at shutdown); they count as logged `now`.
    pub(crate) fn held_back(&mut self, now: Instant, interval: Duration, all: bool) -> Option<u64> {
        if self.unlogged == 0 || !(all || self.interval_passed(now, interval)) {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Whether forgetting this throttle would change a line: events are held back, or a
    /// line was logged within `interval`.
    pub(crate) fn matters(&self, now: Instant, interval: Duration) -> bool {
        self.unlogged > 0 || !self.interval_passed(now, interval)
    }

    fn interval_passed(&self, now: Instant, interval: Duration) -> bool {
        self.logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    #[test]
    fn one_line_per_interval_with_the_events_since_the_last() {
        let mut line = LineThrottle::default();
        let t0 = Instant::now();
        assert!(!line.matters(t0, EVERY));
        assert_eq!(line.count(t0, EVERY), Some(1));
        for i in 1..=99 {
            assert_eq!(
                line.count(t0 + Duration::from_millis(i * 100 - 50), EVERY),
                None
            );
        }
        assert_eq!(line.count(t0 + EVERY, EVERY), Some(100));
        assert_eq!(line.count(t0 + EVERY + Duration::from_secs(1), EVERY), None);
        assert_eq!(line.count(t0 + EVERY * 3, EVERY), Some(2));
    }

    #[test]
    fn events_held_back_are_given_once_their_interval_passed_or_at_the_end() {
        let mut line = LineThrottle::default();
        let t0 = Instant::now();
        assert_eq!(line.held_back(t0, EVERY, true), None, "nothing held back");
        assert_eq!(line.count(t0, EVERY), Some(1));
        assert_eq!(line.count(t0 + Duration::from_secs(1), EVERY), None);
        assert_eq!(
            line.held_back(t0 + Duration::from_secs(2), EVERY, false),
            None
        );
        assert!(line.matters(t0 + EVERY * 5, EVERY), "one is held back");
        assert_eq!(line.held_back(t0 + EVERY, EVERY, false), Some(1));
        assert_eq!(line.held_back(t0 + EVERY * 2, EVERY, true), None);
        assert!(line.matters(t0 + EVERY + Duration::from_secs(1), EVERY));
        assert!(!line.matters(t0 + EVERY * 2, EVERY));
        // At the end, whatever the interval.
        assert_eq!(line.count(t0 + EVERY * 2, EVERY), Some(1));
        assert_eq!(line.count(t0 + EVERY * 2, EVERY), None);
        assert_eq!(line.held_back(t0 + EVERY * 2, EVERY, true), Some(1));
    }
}
