//! From the manifests' desired state and the runtime's observed containers to the pure
//! planner's inputs, and back to explanations of its steps. Shared by the agent's
//! reconciler and the offline `wharf plan`.

use std::collections::BTreeMap;

use std::time::Duration;

use super::plan::{Have, Inputs, Next, Phase, Rollout, Step, Want, DEFAULT_UPDATE_TIMEOUT};
use crate::manifest::{changed_fields, Container, DesiredState, UpdateStrategy};
use crate::runtime::instance::Role;
use crate::runtime::{Observed, ObservedState};

/// The hash that decides replace-or-keep for a container: its spec hash, extended with
/// the specs of the declared networks it attaches to, so changing a network's subnet
/// replaces the containers on it (manifest-v1.md). A container on undeclared networks
/// only (`default`) keeps its plain spec hash, so upgrading never restarts it.
pub fn effective_hash(c: &Container, desired: &DesiredState) -> String {
    let spec = c.spec_hash();
    let names = c.spec.networks.clone().unwrap_or_default();
    let nets: Vec<String> = names
        .iter()
        .filter_map(|n| desired.networks.get(n))
        .map(|n| serde_json::to_string(&n.object.spec).unwrap_or_default())
        .collect();
    if nets.is_empty() {
        return spec;
    }
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(spec.as_bytes());
    for n in &nets {
        h.update(b"\n");
        h.update(n.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The networks `c` attaches to that no manifest declares (the built-in `default`,
/// `host` and `none` always exist).
pub fn missing_networks(c: &Container, desired: &DesiredState) -> Vec<String> {
    c.spec
        .networks
        .iter()
        .flatten()
        .filter(|n| !matches!(n.as_str(), "default" | "host" | "none"))
        .filter(|n| !desired.networks.contains_key(n.as_str()))
        .cloned()
        .collect()
}

/// The bridge networks `c` attaches to, in interface order: `default` unless it
/// names some; none for `host` and `none`, which are namespaces.
pub fn bridge_networks(c: &Container) -> Vec<String> {
    match c.spec.networks.as_deref() {
        None => vec!["default".to_owned()],
        Some([only]) if only == "host" || only == "none" => Vec::new(),
        Some(names) => names.to_vec(),
    }
}

/// The planner's view of `desired` and `observed`, without backoff.
pub fn inputs(desired: &DesiredState, observed: &BTreeMap<String, Observed>) -> Inputs {
    let mut inputs = Inputs {
        complete: desired.complete,
        frozen: desired
            .frozen
            .iter()
            .filter_map(|k| k.strip_prefix("Container/"))
            .map(str::to_owned)
            .collect(),
        ..Default::default()
    };
    for (name, c) in &desired.containers {
        if !missing_networks(&c.object, desired).is_empty() {
            // Its network is not (or no longer) declared: leave the container exactly as
            // it runs; removing a Network never takes its containers down.
            inputs.frozen.insert(name.clone());
            continue;
        }
        inputs.desired.insert(
            name.clone(),
            Want {
                hash: effective_hash(&c.object, desired),
                restart_policy: c.object.spec.restart_policy,
                unsupported: c.object.unsupported_fields(),
                networks: bridge_networks(&c.object),
                volumes: c.object.volume_names().map(str::to_owned).collect(),
                depends_on: c.object.spec.depends_on.clone(),
                rollout: rollout(&c.object),
                healthcheck: c.object.spec.healthcheck.is_some(),
            },
        );
    }
    for (name, o) in observed {
        if o.refused.is_some() {
            // Its record is of a newer wharf: neither replaced nor removed.
            inputs.frozen.insert(name.clone());
        }
        inputs.observed.insert(name.clone(), have(o));
    }
    inputs
}

/// The planner's view of one runtime instance (its `next` and `health` filled in by
/// the reconciler, which sees both instances and the health monitor).
pub fn have(o: &Observed) -> Have {
    let phase = match &o.state {
        ObservedState::Running(_) => Phase::Running,
        ObservedState::Exited(e) if e.error.is_some() => Phase::StartFailed,
        ObservedState::Exited(e) => Phase::Exited { code: e.exit_code },
        ObservedState::Lost => Phase::Lost,
    };
    let meta = o.meta.as_ref();
    Have {
        hash: meta.map(|m| m.hash.clone()),
        phase,
        networks: meta.map(|m| m.networks.clone()).unwrap_or_default(),
        volumes: meta.map(|m| m.volumes.clone()).unwrap_or_default(),
        unknown: o.refused.is_some(),
        health: None,
        depends_on: meta
            .and_then(|m| m.spec.as_ref())
            .map(|c| c.spec.depends_on.iter().map(|d| d.name.clone()).collect())
            .unwrap_or_default(),
        next: None,
    }
}

/// Adds each container's other instance (a StartFirst update's) to `inputs`, with
/// its health from `health_of`.
pub fn add_others(
    inputs: &mut Inputs,
    others: &BTreeMap<String, (Observed, Role)>,
    health_of: impl Fn(&Observed) -> Option<crate::health::Health>,
) {
    let now_ms = crate::runtime::records::now_ms();
    for (name, (o, role)) in others {
        if o.refused.is_some() {
            // A newer wharf's record: the container is left exactly as it is.
            inputs.frozen.insert(name.clone());
            continue;
        }
        let Some(have) = inputs.observed.get_mut(name) else {
            continue;
        };
        let other = self::have(o);
        // It holds what it was made with too.
        have.networks.extend(other.networks);
        have.volumes.extend(other.volumes);
        have.next = Some(Next {
            role: *role,
            hash: other.hash,
            phase: other.phase,
            health: health_of(o),
            age: match &o.state {
                ObservedState::Running(r) => {
                    Duration::from_millis((now_ms - r.started_at_ms).max(0) as u64)
                }
                _ => Duration::ZERO,
            },
            generation: o.meta.as_ref().map_or(0, |m| m.generation),
        });
    }
}

/// How `c`'s replacements are rolled out.
pub fn rollout(c: &Container) -> Rollout {
    match &c.spec.update {
        Some(u) if u.strategy == UpdateStrategy::StartFirst => Rollout::StartFirst {
            timeout: u.timeout.unwrap_or(DEFAULT_UPDATE_TIMEOUT),
        },
        _ => Rollout::Recreate,
    }
}

/// Fills in which fields a replace changes, from the manifest object the old container
/// was created from (kept in its record) and the new one.
pub fn explain(step: &mut Step, desired: &DesiredState, observed: &BTreeMap<String, Observed>) {
    let (Step::Replace { name, changed } | Step::StartNext { name, changed }) = step else {
        return;
    };
    let old = observed
        .get(name.as_str())
        .and_then(|o| o.meta.as_ref())
        .and_then(|m| m.spec.as_ref());
    if let (Some(old), Some(new)) = (old, desired.containers.get(name.as_str())) {
        *changed = changed_fields(old, &new.object);
    }
}

/// The volumes the manifests declare, and those the declared containers mount.
pub fn declared_volumes(desired: &DesiredState) -> crate::volumes::Declared {
    crate::volumes::Declared {
        volumes: desired
            .volumes
            .iter()
            .map(|(name, v)| (name.clone(), v.object.spec.reclaim_policy))
            .collect(),
        sources: desired
            .volumes
            .iter()
            .map(|(name, v)| (name.clone(), v.file.clone()))
            .collect(),
        frozen: desired
            .frozen
            .iter()
            .filter_map(|key| key.strip_prefix("Volume/").map(str::to_owned))
            .collect(),
        mounted: desired
            .containers
            .values()
            .flat_map(|c| c.object.volume_names().map(str::to_owned))
            .collect(),
        complete: desired.complete,
    }
}
