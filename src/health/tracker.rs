//! A container's health from its probe results: pure, so the rules are unit-tested.
//!
//! Docker's and Compose's rules: the state starts `starting`; a passing probe makes it
//! `healthy` and resets the count of failures; `retries` failures in a row make it
//! `unhealthy`; failures within `startPeriod` of the start do not count, unless a probe
//! has already passed (the container is then considered started).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::probe::Outcome;
use super::{Health, ProbeResult, KEPT_RESULTS};

/// The health of one run of a container.
#[derive(Debug, Clone)]
pub struct Tracker {
    retries: u32,
    start_period: Duration,
    /// When the run started.
    started: Instant,
    health: Health,
    failures: u32,
    passed_once: bool,
    results: VecDeque<ProbeResult>,
}

impl Tracker {
    pub fn new(retries: u32, start_period: Duration, started: Instant) -> Self {
        Tracker {
            retries: retries.max(1),
            start_period,
            started,
            health: Health::Starting,
            failures: 0,
            passed_once: false,
            results: VecDeque::new(),
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Failures in a row that counted.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The last results, oldest first.
    pub fn results(&self) -> Vec<ProbeResult> {
        self.results.iter().cloned().collect()
    }

    /// Takes one probe's outcome, ended at `now` (`time`: the same, as RFC 3339);
    /// returns the health after it.
    pub fn record(&mut self, outcome: &Outcome, now: Instant, time: String) -> Health {
        self.results.push_back(ProbeResult {
            time,
            exit_code: outcome.exit_code,
            status: outcome.status,
            output: outcome.output.clone(),
        });
        while self.results.len() > KEPT_RESULTS {
            self.results.pop_front();
        }
        if outcome.healthy {
            self.passed_once = true;
            self.failures = 0;
            self.health = Health::Healthy;
        } else if self.passed_once || now.duration_since(self.started) >= self.start_period {
            self.failures += 1;
            if self.failures >= self.retries {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(healthy: bool) -> Outcome {
        Outcome {
            healthy,
            exit_code: Some(if healthy { 0 } else { 1 }),
            status: None,
            output: String::new(),
        }
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals_it() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3, Duration::ZERO, t0);
        assert_eq!(t.health(), Health::Starting);
        assert_eq!(t.record(&outcome(false), t0, "a".into()), Health::Starting);
        assert_eq!(t.record(&outcome(false), t0, "b".into()), Health::Starting);
        assert_eq!(t.record(&outcome(true), t0, "c".into()), Health::Healthy);
        assert_eq!(t.failures(), 0);
        for _ in 0..2 {
            assert_eq!(t.record(&outcome(false), t0, "d".into()), Health::Healthy);
        }
        assert_eq!(t.record(&outcome(false), t0, "e".into()), Health::Unhealthy);
        assert_eq!(t.record(&outcome(true), t0, "f".into()), Health::Healthy);
        // Only the last results are kept.
        let times: Vec<String> = t.results().into_iter().map(|r| r.time).collect();
        assert_eq!(times, ["c", "d", "d", "e", "f"]);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_unless_it_passed_once() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut t = Tracker::new(1, period, t0);
        let early = t0 + Duration::from_secs(5);
        assert_eq!(
            t.record(&outcome(false), early, "a".into()),
            Health::Starting
        );
        assert_eq!(t.failures(), 0);
        // After the period, a failure counts.
        let late = t0 + Duration::from_secs(11);
        assert_eq!(
            t.record(&outcome(false), late, "b".into()),
            Health::Unhealthy
        );
        // Passed once within the period: failures count from then on.
        let mut t = Tracker::new(1, period, t0);
        assert_eq!(t.record(&outcome(true), early, "a".into()), Health::Healthy);
        assert_eq!(
            t.record(&outcome(false), early, "b".into()),
            Health::Unhealthy
        );
    }
}
