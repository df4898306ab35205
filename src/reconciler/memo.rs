//! What the reconciler remembers about a container between passes: its failures, its
//! crash loop and when it may be tried again. Pure bookkeeping, unit-tested with a
//! given clock.

use std::time::{Duration, Instant, SystemTime};

use super::backoff;
use crate::class::{Classify, ErrorClass};
use crate::manifest::RestartPolicy;
use crate::runtime::ExitRecord;

/// The memo of one container.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    /// The desired spec hash this memo is about; a new hash starts a fresh memo, so an
    /// edit is applied at once, without waiting out an old backoff.
    pub hash: String,
    /// Why the last step failed.
    pub message: Option<String>,
    /// Given up on until the spec changes (state `failed`): a permanent failure, or a
    /// failed start under `Never`.
    pub gave_up: bool,
    /// Consecutive failed steps.
    pub failures: u32,
    /// Consecutive restarts of a crash loop (reset by a long run).
    pub crashes: u32,
    /// No step before this time (and the same time on the wall clock, for the status).
    pub not_before: Option<(Instant, SystemTime)>,
    /// The run whose exit was already accounted for.
    pub seen_exit_run: Option<u64>,
    /// Why this spec's StartFirst update was given up (rolled back), and under which
    /// rollout settings: it is not tried again until the spec changes (a new memo) or
    /// those settings do (a longer `update.timeout`), whatever the old version's
    /// restarts do.
    pub rollback: Option<(String, super::plan::Rollout)>,
}

impl Memo {
    /// Accounts for an exit the restart policy restarts, once per run: a run of
    /// [`backoff::RESET_AFTER`] or more resets the crash loop, a shorter one grows it.
    /// `started_at` is when the run began, in seconds since the epoch.
    pub fn note_exit(&mut self, exit: &ExitRecord, started_at: Option<i64>, now: Instant) {
        if self.seen_exit_run == Some(exit.run) {
            return;
        }
        self.seen_exit_run = Some(exit.run);
        let ran = exit.finished_at - started_at.unwrap_or(exit.finished_at);
        if ran >= backoff::RESET_AFTER.as_secs() as i64 {
            self.crashes = 0;
        }
        self.crashes += 1;
        self.hold(backoff::restart_delay(self.crashes), now);
    }

    /// Accounts for a failed step. `at_start` says the runtime's start itself failed
    /// (not the image pull before it): under `Never` that is the one try.
    pub fn note_failure<E: Classify + std::fmt::Display>(
        &mut self,
        error: &E,
        at_start: bool,
        policy: RestartPolicy,
        now: Instant,
    ) {
        self.failures += 1;
        let permanent = error.class() == ErrorClass::Permanent;
        self.gave_up = permanent || (at_start && policy == RestartPolicy::Never);
        self.message = Some(if self.gave_up && !permanent {
            format!("{error} (restartPolicy Never: not tried again until the manifest changes)")
        } else {
            error.to_string()
        });
        if self.gave_up {
            self.not_before = None;
        } else {
            self.hold(backoff::retry_delay(self.failures), now);
        }
    }

    /// Accounts for a failed step that is retried whatever failed (a step of an update:
    /// the running version serves meanwhile), with the usual backoff.
    pub fn note_retry(&mut self, error: &impl std::fmt::Display, now: Instant) {
        self.failures += 1;
        self.gave_up = false;
        self.message = Some(error.to_string());
        self.hold(backoff::retry_delay(self.failures), now);
    }

    /// Accounts for a step that succeeded. A restart keeps the crash loop's count; a
    /// create or replace is a new container.
    pub fn note_success(&mut self, restart: bool) {
        self.message = None;
        self.gave_up = false;
        self.failures = 0;
        self.not_before = None;
        if !restart {
            self.crashes = 0;
        }
    }

    fn hold(&mut self, delay: Duration, now: Instant) {
        self.not_before = (!delay.is_zero()).then(|| (now + delay, SystemTime::now() + delay));
    }

    /// When the next try is, on the wall clock, if it is still ahead.
    pub fn next_try(&self, now: Instant) -> Option<SystemTime> {
        self.not_before
            .filter(|(at, _)| *at > now)
            .map(|(_, wall)| wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;

    fn exit(run: u64, ran: i64) -> (ExitRecord, Option<i64>) {
        let record = ExitRecord {
            run,
            exit_code: 1,
            signal: None,
            finished_at: 1_000_000 + ran,
            finished_at_ms: 0,
            error: None,
            oom_killed: false,
            message: None,
        };
        (record, Some(1_000_000))
    }

    #[test]
    fn a_crash_loop_grows_once_per_run_and_a_long_run_resets_it() {
        let now = Instant::now();
        let mut m = Memo::default();
        let (e, started) = exit(1, 1);
        m.note_exit(&e, started, now);
        assert_eq!(m.not_before, None, "the first restart is immediate");
        m.note_exit(&e, started, now);
        assert_eq!(m.crashes, 1, "the same run is counted once");
        let (e, started) = exit(2, 1);
        m.note_exit(&e, started, now);
        assert_eq!(
            m.not_before.map(|n| n.0),
            Some(now + Duration::from_millis(100))
        );
        let (e, started) = exit(3, 601);
        m.note_exit(&e, started, now);
        assert_eq!(
            (m.crashes, m.not_before),
            (1, None),
            "reset after 10 minutes"
        );
    }

    #[test]
    fn a_permanent_failure_or_a_failed_start_under_never_gives_up() {
        let now = Instant::now();
        let transient = RuntimeError::StartFailed("mount: busy".into());
        let permanent = RuntimeError::Unrunnable("no such user".into());
        let mut m = Memo::default();
        m.note_failure(&transient, true, RestartPolicy::Always, now);
        assert!(!m.gave_up && m.next_try(now).is_some());
        m.note_failure(&permanent, true, RestartPolicy::Always, now);
        assert!(m.gave_up && m.next_try(now).is_none());
        let mut m = Memo::default();
        m.note_failure(&transient, true, RestartPolicy::Never, now);
        assert!(m.gave_up, "Never means never");
        let mut m = Memo::default();
        m.note_failure(&transient, false, RestartPolicy::Never, now);
        assert!(!m.gave_up, "a pull is retried: the container never ran");
    }
}
