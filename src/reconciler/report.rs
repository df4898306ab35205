//! One container's status object, from its manifest, what the runtime observed, its
//! memo and the step in flight.

use std::time::{Instant, SystemTime};

use super::memo::Memo;
use super::plan::{self, Step};
use super::status::{ContainerState, ContainerStatus, LastStateStatus};
use crate::manifest::{Container, RestartPolicy, Sourced};
use crate::runtime::records::{rfc3339, rfc3339_ms};
use crate::runtime::{LastState, Observed, ObservedState};

pub(super) fn unsupported_message(fields: &[&str]) -> String {
    format!(
        "not supported yet: {} (parsed and validated, but this release cannot apply them; remove them to run the container)",
        fields.iter().map(|f| format!("spec.{f}")).collect::<Vec<_>>().join(", ")
    )
}

pub(super) fn wall_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn last_state(l: &LastState) -> LastStateStatus {
    LastStateStatus {
        exit_code: l.exit_code,
        signal: l.signal,
        reason: if l.oom_killed {
            "OOMKilled"
        } else if l.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into(),
        oom_killed: l.oom_killed,
        started_at: l.started_at.map(rfc3339),
        finished_at: rfc3339(l.finished_at),
        message: l.message.clone(),
    }
}

/// A replace that failed before it stopped anything (its image could not be pulled):
/// the old version runs on, and the message says so. `running_hash`: the effective hash
/// the running container was made from; the status carries the desired one.
pub(super) fn note_outdated(status: &mut ContainerStatus, running_hash: Option<&str>, memo: &Memo) {
    let outdated = running_hash.is_some_and(|h| Some(h) != status.spec_hash.as_deref());
    // (A spec this release cannot apply says so already.)
    let unsupported = status
        .message
        .as_deref()
        .is_some_and(|m| m.starts_with("the changed spec is not applied"));
    let Some(m) = &memo.message else { return };
    if status.state != ContainerState::Running || !outdated || unsupported {
        return;
    }
    let next = status
        .next_restart_at
        .as_ref()
        .map(|t| format!("; next try at {t}"))
        .unwrap_or_default();
    status.message = Some(format!(
        "the update is not applied, the running version keeps running: {m}{next}"
    ));
}

/// What the health monitor probes of a running instance with a healthcheck: the one
/// in its record's spec, whatever the manifest now says (a changed healthcheck is a
/// replace). By instance name: the exec probe enters that instance. Only the serving
/// one is restarted when unhealthy; a StartFirst update's new version is rolled back
/// instead.
pub(super) fn health_target(o: &Observed, serving: bool) -> Option<crate::health::HealthTarget> {
    let ObservedState::Running(r) = &o.state else {
        return None;
    };
    let c = o.meta.as_ref()?.spec.as_ref()?;
    Some(crate::health::HealthTarget {
        name: o.name.clone(),
        pid: r.pid,
        start_time: r.start_time,
        started_at_ms: Some(r.started_at_ms),
        check: c.spec.healthcheck.clone()?,
        restart_when_unhealthy: serving && c.spec.restart_policy == RestartPolicy::Always,
    })
}

pub(super) fn container_status(
    name: &str,
    desired: Option<&Sourced<Container>>,
    observed: Option<&Observed>,
    memo: &Memo,
    inflight: Option<&Step>,
    now: Instant,
) -> ContainerStatus {
    let unsupported = desired
        .map(|c| c.object.unsupported_fields())
        .unwrap_or_default();
    let meta = observed.and_then(|o| o.meta.as_ref());
    let next_try = memo.next_try(now);
    let mut status = ContainerStatus {
        name: name.to_owned(),
        state: ContainerState::Pending,
        pid: None,
        image: desired
            .map(|c| c.object.spec.image.clone())
            .or_else(|| meta.map(|m| m.image.clone()))
            .unwrap_or_default(),
        image_digest: meta.map(|m| m.image_digest.clone()),
        restart_count: observed.map_or(0, |o| o.restart_count),
        exit_code: None,
        started_at: observed.and_then(|o| o.started_at).map(rfc3339),
        finished_at: None,
        source: desired
            .map(|c| c.file.clone())
            .or_else(|| meta.map(|m| m.source.clone())),
        spec_hash: desired
            .map(|c| c.object.spec_hash())
            .or_else(|| meta.map(|m| m.hash.clone())),
        message: memo.message.clone(),
        addresses: meta.map(|m| m.addresses.clone()).unwrap_or_default(),
        log_path: observed.map(|o| o.log_path.clone()),
        previous_log: observed.and_then(|o| o.previous_log.clone()),
        usage: observed.and_then(|o| o.usage),
        volumes: {
            // What it mounts now and what its next version will mount: both are in use.
            let mut v: Vec<String> = desired
                .map(|c| c.object.volume_names().map(str::to_owned).collect())
                .unwrap_or_default();
            v.extend(meta.iter().flat_map(|m| m.volumes.iter().cloned()));
            v.sort();
            v.dedup();
            v
        },
        generation: meta.map(|m| m.generation).filter(|g| *g > 0),
        last_state: observed.and_then(|o| o.last_state.as_ref()).map(last_state),
        next_restart_at: next_try.map(|t| rfc3339_ms(wall_ms(t))),
        health: None,
        probes: Vec::new(),
        health_target: None,
    };
    let policy = desired.map_or(RestartPolicy::Never, |c| c.object.spec.restart_policy);
    match observed.map(|o| &o.state) {
        _ if observed.is_some_and(|o| o.refused.is_some()) => {
            status.state = ContainerState::Failed;
            status.message = observed.and_then(|o| o.refused.clone());
        }
        None if memo.gave_up => status.state = ContainerState::Failed,
        None if !unsupported.is_empty() => {
            status.state = ContainerState::Failed;
            status.message = Some(unsupported_message(&unsupported));
        }
        None | Some(ObservedState::Lost) => status.state = ContainerState::Pending,
        Some(ObservedState::Running(r)) => {
            status.state = ContainerState::Running;
            status.pid = Some(r.pid);
            status.health_target = observed.and_then(|o| health_target(o, true));
            if !unsupported.is_empty() {
                status.message = Some(format!(
                    "the changed spec is not applied, the previous one keeps running: {}",
                    unsupported_message(&unsupported)
                ));
            }
        }
        Some(ObservedState::Exited(e)) => {
            status.exit_code = e.error.is_none().then_some(e.exit_code);
            status.finished_at = Some(rfc3339(e.finished_at));
            if e.oom_killed && status.message.is_none() {
                status.message = Some(
                    "OOMKilled: the container exceeded its memory limit (spec.resources.memory)"
                        .into(),
                );
            }
            if let (Some(m), None) = (&e.message, &status.message) {
                status.message = Some(m.clone());
            }
            status.state = if let Some(err) = &e.error {
                status.message.get_or_insert_with(|| err.clone());
                // A start failure: retried (pending) unless given up or under `Never`.
                if memo.gave_up || policy == RestartPolicy::Never || desired.is_none() {
                    ContainerState::Failed
                } else {
                    ContainerState::Pending
                }
            } else if memo.gave_up {
                ContainerState::Failed
            } else if desired.is_some() && plan::should_restart(policy, e.exit_code) {
                ContainerState::Pending
            } else {
                ContainerState::Exited
            };
        }
    }
    if status.state == ContainerState::Pending {
        if let (Some(t), Some(m)) = (&status.next_restart_at, &status.message) {
            status.message = Some(format!("{m}; next try at {t}"));
        } else if let (Some(t), Some(ObservedState::Exited(e))) =
            (&status.next_restart_at, observed.map(|o| &o.state))
        {
            status.message = Some(format!(
                "back-off restarting after exit code {}: next restart at {t}",
                e.exit_code
            ));
        }
    }
    if let Some(step) = inflight {
        if status.message.is_none() || matches!(step, Step::Remove { .. }) {
            status.message = Some(match step {
                Step::Create { .. } => "creating".into(),
                Step::Replace { changed, .. } if !changed.is_empty() => {
                    format!("replacing: {} changed", changed.join(", "))
                }
                Step::Replace { .. } => "replacing: the spec changed".into(),
                Step::Restart { .. } => "restarting".into(),
                Step::StartNext { changed, .. } if !changed.is_empty() => format!(
                    "updating: {} changed; starting the new version beside the running one",
                    changed.join(", ")
                ),
                Step::StartNext { .. } => {
                    "updating: starting the new version beside the running one".into()
                }
                Step::Promote { .. } => {
                    "updating: the new version is ready; moving the traffic to it and stopping the old one".into()
                }
                Step::Rollback { .. } => "rolling back: stopping the new version".into(),
                // A replace whose network is being remade stops the old one first.
                Step::Remove { .. } if desired.is_some() => {
                    "replacing: stopping the old container".into()
                }
                Step::Remove { .. } => "removing: no manifest declares it".into(),
                Step::EnsureNetwork { .. } | Step::RemoveNetwork { .. } | Step::Volume { .. } => {
                    String::new()
                }
            });
        }
    }
    status
}
