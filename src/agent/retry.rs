//! The agent's error policy for writes that must eventually succeed —
//! publishing this node's annotations, setting `NetworkUnavailable=False`,
//! writing the subnet file: a failure schedules a retry after a capped,
//! doubling backoff (independent of any other event), is logged once per
//! failure streak (later attempts of the streak at debug), and is counted.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// The first retry's delay.
pub const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest delay between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// One job's retry state.
#[derive(Debug, Clone)]
pub struct Retry {
    what: &'static str,
    delay: Duration,
    due: Option<Instant>,
    streak: u32,
    failures: u64,
}

impl Retry {
    /// A job named `what` (for the log), nothing pending.
    pub fn new(what: &'static str) -> Retry {
        Retry {
            what,
            delay: FIRST_DELAY,
            due: None,
            streak: 0,
            failures: 0,
        }
    }

    /// When the next attempt is due; `None` while nothing failed.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| d <= now)
    }

    /// Failures so far (all streaks).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Records an attempt's outcome: a success ends the streak (logged if
    /// there was one); a failure schedules the next attempt. Returns
    /// whether it succeeded.
    pub fn record<E: Display>(&mut self, result: Result<(), E>) -> bool {
        match result {
            Ok(()) => {
                if self.streak > 0 {
                    tracing::info!(
                        job = self.what,
                        failed_attempts = self.streak,
                        "succeeded after retrying"
                    );
                }
                self.streak = 0;
                self.delay = FIRST_DELAY;
                self.due = None;
                true
            }
            Err(e) => {
                self.failures += 1;
                self.streak += 1;
                if self.streak == 1 {
                    tracing::warn!(job = self.what, error = %e, "failed; retrying with backoff (up to every {}s) until it succeeds", MAX_DELAY.as_secs());
                } else {
                    tracing::debug!(job = self.what, error = %e, attempt = self.streak, "failed again");
                }
                self.due = Some(Instant::now() + self.delay);
                self.delay = (self.delay * 2).min(MAX_DELAY);
                false
            }
        }
    }
}

/// The earliest due time among `jobs`.
pub fn next_due<'a>(jobs: impl IntoIterator<Item = &'a Retry>) -> Option<Instant> {
    jobs.into_iter().filter_map(Retry::due).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let mut r = Retry::new("test");
        assert!(r.due().is_none());
        let mut delays = Vec::new();
        for _ in 0..12 {
            let before = Instant::now();
            assert!(!r.record(Err("no")));
            delays.push(r.due().map(|d| d - before));
        }
        assert_eq!(delays[0], Some(FIRST_DELAY));
        assert_eq!(delays[1], Some(FIRST_DELAY * 2));
        assert_eq!(delays[11], Some(MAX_DELAY));
        assert_eq!(r.failures(), 12);
        assert!(r.record(Ok::<(), &str>(())));
        assert!(r.due().is_none());
        r.record(Err("again"));
        assert_eq!(r.due().map(|d| d - Instant::now()), Some(FIRST_DELAY));
        assert_eq!(r.failures(), 13);
    }

    #[tokio::test(start_paused = true)]
    async fn next_due_is_the_earliest() {
        let (mut a, mut b, c) = (Retry::new("a"), Retry::new("b"), Retry::new("c"));
        a.record(Err("x"));
        a.record(Err("x"));
        b.record(Err("x"));
        assert_eq!(next_due([&a, &b, &c]), b.due());
        assert!(next_due([&c]).is_none());
    }
}
