//! Healthchecks: `exec`, `http` and `tcp` probes of running containers, with Compose's
//! meanings and defaults (`interval` 30 s, `timeout` 30 s, `retries` 3, `startPeriod`
//! 0 s), their results in the container object (`health`, `probes`), `wharf ps` and
//! `/metrics`, and an unhealthy container under `restartPolicy: Always` stopped so its
//! policy restarts it (kubelet's liveness probe; Docker only reports it).
//!
//! - [`probe`]: one probe, bounded in time and output.
//! - [`tracker`]: the pure state machine (starting, healthy, unhealthy).
//! - [`monitor`]: one task per running container that has a healthcheck.

pub mod monitor;
pub mod probe;
pub mod prober;
pub mod prober_process;
pub mod tracker;

use serde::{Deserialize, Serialize};

pub use monitor::{HealthTarget, Monitor};
pub use tracker::Tracker;

/// A container's health, as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No probe has passed yet, and not enough have failed.
    Starting,
    Healthy,
    /// `retries` probes in a row failed (outside the start period).
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// One probe's result, as the container object shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// RFC 3339, UTC, with milliseconds: when it ended.
    pub time: String,
    /// `exec`: the command's exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `http`: the response's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// At most 4 KiB: the command's output, the response's start, or why it failed.
    pub output: String,
}

/// How many results a container keeps (Docker keeps 5).
pub const KEPT_RESULTS: usize = 5;
