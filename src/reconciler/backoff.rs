//! Exponential backoff for retries and crash loops.

use std::time::Duration;

/// First retry delay.
pub const BASE: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
pub const MAX: Duration = Duration::from_secs(60);
/// A container that ran at least this long before exiting starts a fresh backoff
/// (Docker resets its restart delay after 10 s of running, too).
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// The delay before attempt `failures + 1`: 100 ms, doubling, capped at 60 s.
pub fn delay(failures: u32) -> Duration {
    BASE.saturating_mul(2u32.saturating_pow(failures.min(20)))
        .min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_from_base_and_is_capped() {
        assert_eq!(delay(0), Duration::from_millis(100));
        assert_eq!(delay(1), Duration::from_millis(200));
        assert_eq!(delay(4), Duration::from_millis(1600));
        assert_eq!(delay(30), MAX);
    }
}
