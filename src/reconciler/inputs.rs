//! From the manifests' desired state and the runtime's observed containers to the pure
//! planner's inputs, and back to explanations of its steps. Shared by the agent's
//! reconciler and the offline `wharf plan`.

use std::collections::BTreeMap;

use super::plan::{Have, Inputs, Phase, Step, Want};
use crate::manifest::{changed_fields, Container, DesiredState};
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
            },
        );
    }
    for (name, o) in observed {
        if o.refused.is_some() {
            // Its record is of a newer wharf: neither replaced nor removed.
            inputs.frozen.insert(name.clone());
        }
        let phase = match &o.state {
            ObservedState::Running(_) => Phase::Running,
            ObservedState::Exited(e) if e.error.is_some() => Phase::StartFailed,
            ObservedState::Exited(e) => Phase::Exited { code: e.exit_code },
            ObservedState::Lost => Phase::Lost,
        };
        inputs.observed.insert(
            name.clone(),
            Have {
                hash: o.meta.as_ref().map(|m| m.hash.clone()),
                phase,
                networks: o
                    .meta
                    .as_ref()
                    .map(|m| m.networks.clone())
                    .unwrap_or_default(),
                volumes: o
                    .meta
                    .as_ref()
                    .map(|m| m.volumes.clone())
                    .unwrap_or_default(),
                unknown: o.refused.is_some(),
                // Filled in by the reconciler, which knows the health monitor's view.
                health: None,
                depends_on: o
                    .meta
                    .as_ref()
                    .and_then(|m| m.spec.as_ref())
                    .map(|c| c.spec.depends_on.iter().map(|d| d.name.clone()).collect())
                    .unwrap_or_default(),
            },
        );
    }
    inputs
}

/// Fills in which fields a replace changes, from the manifest object the old container
/// was created from (kept in its record) and the new one.
pub fn explain(step: &mut Step, desired: &DesiredState, observed: &BTreeMap<String, Observed>) {
    let Step::Replace { name, changed } = step else {
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
