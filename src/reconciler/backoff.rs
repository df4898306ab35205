//! How long to wait before trying again: after a crash (the restart policy) and after a
//! failed step (a pull, a start).
//!
//! The schedule, and why:
//! - The first restart after a crash is immediate: a container that dies once (an OOM
//!   kill, a `kill -9`) is back in milliseconds, as under systemd's `Restart=always`.
//! - Then 100 ms, doubling: Docker's restart manager starts there, so a crash loop is
//!   slowed within a second but a short burst of failures recovers fast.
//! - Capped at 5 minutes, kubelet's cap: a container that keeps crashing costs a start
//!   every 5 minutes, not a busy loop (kubelet's 10 s first delay is not taken: it is
//!   what makes `CrashLoopBackOff` slow to recover from a single crash).
//! - Reset after 10 minutes of running without exiting, as kubelet does: a long-lived
//!   service that crashes once a day restarts at once every time.
//!
//! A failed step (image pull, start) is retried after 100 ms, doubling, with the same
//! cap: there was no run, so there is nothing to restart at once.

use std::time::Duration;

/// First delay of a crash loop after the immediate restart, and of a retry.
pub const BASE: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran at least this long before exiting starts a fresh backoff.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The delay before restart `n` (1-based) of a crash loop: 0, 100 ms, 200 ms, … 5 min.
pub fn restart_delay(n: u32) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => doubling(n - 2),
    }
}

/// The delay after failure `n` (1-based) of a step: 100 ms, 200 ms, … 5 min.
pub fn retry_delay(n: u32) -> Duration {
    doubling(n.saturating_sub(1))
}

fn doubling(k: u32) -> Duration {
    BASE.saturating_mul(2u32.saturating_pow(k.min(20))).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_restarts_at_once_then_doubles_from_100ms_up_to_5_minutes() {
        let ms = |n| restart_delay(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(6)],
            [0, 100, 200, 400, 1600]
        );
        assert_eq!(restart_delay(40), MAX);
    }

    #[test]
    fn a_failed_step_waits_100ms_doubling() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(30), MAX);
    }
}
