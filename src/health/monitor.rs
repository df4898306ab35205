//! One small task per running container that has a healthcheck: it waits `interval`,
//! probes (bounded by `timeout`), and keeps the run's [`Tracker`]. The agent hands it
//! the running containers after every pass ([`Monitor::update`]), reads the health into
//! the status it publishes ([`Monitor::get`]), republishes when a result comes in
//! ([`Monitor::changed`]), and stops a container that turned unhealthy when its policy
//! is `Always` (the receiver [`Monitor::new`] returns).
//!
//! A task belongs to one run (the init's pid and start time): a restarted or replaced
//! container starts over as `starting`, as in Docker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::probe::{self, ExecVia, Target};
use super::{Health, ProbeResult, Tracker};
use crate::manifest::Healthcheck;

/// A running container with a healthcheck.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthTarget {
    pub name: String,
    /// Its init, as recorded.
    pub pid: i32,
    pub start_time: u64,
    /// When the run started, in ms since the epoch (for the start period).
    pub started_at_ms: Option<i64>,
    pub check: Healthcheck,
    /// Stopped when unhealthy (`restartPolicy: Always`), so its policy restarts it.
    pub restart_when_unhealthy: bool,
}

impl HealthTarget {
    /// The same run with the same check: its tracker goes on. (Whether it is restarted
    /// when unhealthy may change under it: a StartFirst update's new version is not,
    /// until it is promoted; its health does not start over then.)
    fn same_run(&self, other: &HealthTarget) -> bool {
        (
            &self.name,
            self.pid,
            self.start_time,
            self.started_at_ms,
            &self.check,
        ) == (
            &other.name,
            other.pid,
            other.start_time,
            other.started_at_ms,
            &other.check,
        )
    }
}

/// A container that turned unhealthy and is to be stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub name: String,
    /// Its init (pid and start time): only that run is stopped.
    pub pid: i32,
    pub start_time: u64,
    /// Why, for its `lastState.message`.
    pub reason: String,
}

/// The health tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    via: ExecVia,
    entries: Mutex<HashMap<String, Entry>>,
    changed: Notify,
    /// A container's health changed (not only its results): dependants may start.
    transitioned: Notify,
    unhealthy: mpsc::UnboundedSender<Unhealthy>,
}

#[derive(Debug)]
struct Entry {
    target: HealthTarget,
    tracker: Tracker,
    task: AbortHandle,
    /// A result came in since [`Monitor::take_changed`] last looked.
    changed: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, e) in entries.drain() {
            e.task.abort();
        }
    }
}

impl Monitor {
    /// A monitor whose `exec` probes run through `via`, and the receiver of the
    /// containers to stop for being unhealthy.
    pub fn new(via: ExecVia) -> (Self, mpsc::UnboundedReceiver<Unhealthy>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            via,
            entries: Mutex::default(),
            changed: Notify::new(),
            transitioned: Notify::new(),
            unhealthy: tx,
        });
        (Monitor { inner }, rx)
    }

    /// Probes exactly `targets` from now on: a new run (or a changed healthcheck)
    /// starts over, a container no longer listed stops being probed. Must run inside a
    /// tokio runtime.
    pub fn update(&self, targets: &[HealthTarget]) {
        let mut entries = self.lock();
        entries.retain(|name, e| match targets.iter().find(|t| t.name == *name) {
            Some(t) if t.same_run(&e.target) => {
                e.target.restart_when_unhealthy = t.restart_when_unhealthy;
                true
            }
            _ => {
                e.task.abort();
                false
            }
        });
        for t in targets {
            if entries.contains_key(&t.name) {
                continue;
            }
            let started = t
                .started_at_ms
                .map(|ms| {
                    let ago = (crate::runtime::records::now_ms() - ms).max(0) as u64;
                    Instant::now()
                        .checked_sub(Duration::from_millis(ago))
                        .unwrap_or_else(Instant::now)
                })
                .unwrap_or_else(Instant::now);
            let task = tokio::spawn(watch(Arc::downgrade(&self.inner), t.clone()));
            entries.insert(
                t.name.clone(),
                Entry {
                    target: t.clone(),
                    tracker: Tracker::new(t.check.retries, t.check.start_period, started),
                    task: task.abort_handle(),
                    changed: false,
                },
            );
        }
    }

    /// The health and last results of `name`, if its run with init `pid` is probed.
    pub fn get(&self, name: &str, pid: i32) -> Option<(Health, Vec<ProbeResult>)> {
        let entries = self.lock();
        let e = entries.get(name).filter(|e| e.target.pid == pid)?;
        Some((e.tracker.health(), e.tracker.results()))
    }

    /// The containers with a new result since the last call: name, init pid, health and
    /// last results. (Republishing only those keeps a result's cost independent of how
    /// many containers are probed.)
    pub fn take_changed(&self) -> Vec<(String, i32, Health, Vec<ProbeResult>)> {
        self.lock()
            .iter_mut()
            .filter(|(_, e)| e.changed)
            .map(|(name, e)| {
                e.changed = false;
                (
                    name.clone(),
                    e.target.pid,
                    e.tracker.health(),
                    e.tracker.results(),
                )
            })
            .collect()
    }

    /// Resolves when a probe result came in since the last call.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// Resolves when a container's health changed since the last call (a pass is due:
    /// a dependant may be waiting for it).
    pub async fn transitioned(&self) {
        self.inner.transitioned.notified().await;
    }

    /// Every probed run's health: name → (init pid, health).
    pub fn states(&self) -> std::collections::BTreeMap<String, (i32, Health)> {
        self.lock()
            .iter()
            .map(|(name, e)| (name.clone(), (e.target.pid, e.tracker.health())))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Probes one run every `interval` (the first after one `interval`, as Docker) until
/// aborted (the run is gone).
async fn watch(inner: std::sync::Weak<Inner>, t: HealthTarget) {
    let target = Target {
        name: t.name.clone(),
        pid: t.pid,
        start_time: t.start_time,
    };
    loop {
        tokio::time::sleep(t.check.interval).await;
        let Some(via) = inner.upgrade().map(|i| i.via.clone()) else {
            return;
        };
        let outcome = probe::run(&t.check.probe, &target, &via, t.check.timeout).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let time = crate::runtime::records::rfc3339_ms(crate::runtime::records::now_ms());
        let (was, now, failures, restart) = {
            let mut entries = inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(e) = entries.get_mut(&t.name).filter(|e| e.target.same_run(&t)) else {
                return;
            };
            let was = e.tracker.health();
            let now = e.tracker.record(&outcome, Instant::now(), time);
            e.changed = true;
            (
                was,
                now,
                e.tracker.failures(),
                e.target.restart_when_unhealthy,
            )
        };
        inner.changed.notify_one();
        if now != was {
            inner.transitioned.notify_one();
        }
        if now == Health::Unhealthy && was != Health::Unhealthy {
            let last = match (outcome.exit_code, outcome.status) {
                (Some(code), _) => format!("exit code {code}"),
                (_, Some(status)) => format!("HTTP {status}"),
                _ => outcome.output.clone(),
            };
            let mut reason = format!("unhealthy: {failures} probes in a row failed; last: {last}");
            if reason.len() > 300 {
                let mut cut = 300;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push('…');
            }
            tracing::warn!(container = %t.name, %reason, "unhealthy");
            // Probing goes on: if the stop fails, the health still tells the truth.
            if restart {
                let _ = inner.unhealthy.send(Unhealthy {
                    name: t.name.clone(),
                    pid: t.pid,
                    start_time: t.start_time,
                    reason,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Probe;

    /// A target on this test process, probed with `tcp` on a closed port: every probe
    /// fails at once, without a container.
    fn target(restart: bool) -> HealthTarget {
        let pid = std::process::id() as i32;
        HealthTarget {
            name: "web.alt".into(),
            pid,
            start_time: crate::runtime::linux::proc::start_time(pid).unwrap(),
            started_at_ms: None,
            check: Healthcheck {
                probe: Probe::Tcp { port: 1 },
                interval: Duration::from_millis(20),
                timeout: Duration::from_secs(1),
                retries: 1,
                start_period: Duration::ZERO,
            },
            restart_when_unhealthy: restart,
        }
    }

    #[tokio::test]
    async fn a_promoted_instance_keeps_its_health_and_is_restarted_from_then_on() {
        let via = ExecVia::new(
            "/nonexistent".into(),
            "/nonexistent".into(),
            "/nonexistent".into(),
        );
        let (monitor, mut unhealthy) = Monitor::new(via);
        // A StartFirst update's new version: probed, never stopped for it.
        monitor.update(&[target(false)]);
        let pid = target(false).pid;
        for _ in 0..100 {
            if monitor
                .get("web.alt", pid)
                .is_some_and(|(h, _)| h == Health::Unhealthy)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (health, results) = monitor.get("web.alt", pid).unwrap();
        assert_eq!(health, Health::Unhealthy);
        assert!(
            unhealthy.try_recv().is_err(),
            "a standby instance is not stopped"
        );
        // Promoted: the same run goes on (its results kept), now restarted when unhealthy.
        monitor.update(&[target(true)]);
        let (health, kept) = monitor.get("web.alt", pid).unwrap();
        assert_eq!(health, Health::Unhealthy, "its health did not start over");
        assert!(kept.len() >= results.len());
        assert!(
            monitor.inner.entries.lock().unwrap()["web.alt"]
                .target
                .restart_when_unhealthy
        );
    }
}
