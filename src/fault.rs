//! Fault injection for crash-safety tests: `WHARF_FAULT=<point>` in the agent's
//! environment makes it kill itself (SIGKILL, as `kill -9` would) the first time it
//! reaches that named point, between two steps of a change. Inert unless set: a point
//! costs one comparison with a value read once.
//!
//! The points, in the order a change meets them (see docs/testing.md):
//!
//! | point | where |
//! | --- | --- |
//! | `container-start:record` | a start's record (its intent) is written, no shim yet |
//! | `container-start:shim` | the shim runs the container, its start not yet noted |
//! | `container-stop:signalled` | a stop signalled the container, not yet waited for |
//! | `container-remove:runtime` | the runtime removed a container, its network not yet |
//! | `network-ensure:bridge` | a network's bridge exists, its record and rules not yet |
//! | `network-remove:bridge` | a network's bridge is gone, its record not yet |
//! | `volume-create:dir` | a volume's folder exists, its record not yet |
//! | `volume-delete:trash` | a deleted volume is moved aside, not yet removed |
//! | `update-handover:moved` | a StartFirst update's traffic moved to the new version, not yet marked promoted |
//! | `update-promote:marked` | the new version is marked promoted, the old one not yet stopped |

use std::sync::OnceLock;

/// Every point, for tests that go through them all.
pub const POINTS: &[&str] = &[
    "container-start:record",
    "container-start:shim",
    "container-stop:signalled",
    "container-remove:runtime",
    "network-ensure:bridge",
    "network-remove:bridge",
    "volume-create:dir",
    "volume-delete:trash",
    "update-promote:marked",
    "update-handover:moved",
];

/// The environment variable naming the point.
pub const ENV: &str = "WHARF_FAULT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Kills this process if `WHARF_FAULT` names `name`.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unlisted fault point {name}");
    if armed() == Some(name) {
        tracing::error!(point = name, "{ENV}: killing the agent here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
