//! The planner: a pure function from desired and observed state to the steps that
//! converge them. No I/O, no clock: time comes in as `now`, backoff as `not_before`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::manifest::{Dependency, DependencyCondition, RestartPolicy};
use crate::net::driver::NetworkConfig;
use crate::runtime::instance::Role;
use crate::volumes::{Action, Declared, OnDisk};

/// How long a StartFirst update's new version without a healthcheck must have run
/// before it takes the traffic (Docker Swarm's `--update-monitor` default).
pub const READY_AFTER: Duration = Duration::from_secs(5);

/// How long a StartFirst update's new version has to become ready by default.
pub const DEFAULT_UPDATE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How a replacement is rolled out (`spec.update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rollout {
    /// Stop the old container, then start the new one.
    #[default]
    Recreate,
    /// Start the new one beside the old, move the traffic once it is ready, then stop
    /// the old; roll back if it is not ready within `timeout`.
    StartFirst { timeout: Duration },
}

/// A container as the manifests want it.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub hash: String,
    pub restart_policy: RestartPolicy,
    /// Fields this release cannot apply yet; non-empty means the container is rejected.
    pub unsupported: Vec<&'static str>,
    /// The bridge networks it attaches to: it is started only once they are made.
    pub networks: Vec<String>,
    /// The named volumes it mounts: a declared one must exist before it starts.
    pub volumes: Vec<String>,
    /// The containers it waits for before it is created or replaced.
    pub depends_on: Vec<Dependency>,
    /// How a replacement is rolled out.
    pub rollout: Rollout,
    /// It has a healthcheck: a StartFirst update waits for `healthy`, not
    /// [`READY_AFTER`].
    pub healthcheck: bool,
}

/// What a container is doing, as far as the planner cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Running,
    /// Its process exited on its own or was stopped.
    Exited {
        code: i32,
    },
    /// It never started: setup or exec failed.
    StartFailed,
    /// Neither running nor with an exit record (e.g. after a reboot).
    Lost,
}

/// A container as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Have {
    /// The spec hash it was created from (`None` for a half-created record).
    pub hash: Option<String>,
    pub phase: Phase,
    /// The bridge networks it is attached to: they stay until it is gone.
    pub networks: Vec<String>,
    /// The named volumes it mounts: not deleted until it is gone.
    pub volumes: Vec<String>,
    /// Its record is of a newer wharf, refused unread: what it holds is unknown, so it
    /// is taken to hold every network and volume (none is removed while it exists).
    pub unknown: bool,
    /// While it runs with a healthcheck: its health.
    pub health: Option<Health>,
    /// The containers it was made to depend on: when both go, it goes first.
    pub depends_on: Vec<String>,
    /// Its second instance, during a StartFirst update.
    pub next: Option<Next>,
}

/// A container's second instance during a StartFirst update (see
/// [`crate::runtime::instance`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Next {
    /// [`Role::Candidate`]: the new version, not yet serving; [`Role::Retired`]: the
    /// old one, after the new one was promoted.
    pub role: Role,
    pub hash: Option<String>,
    pub phase: Phase,
    pub health: Option<Health>,
    /// How long it has been running.
    pub age: Duration,
    pub generation: u64,
}

/// Why a StartFirst update's new version is stopped and removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackReason {
    /// The manifest changed again (or its strategy did): the next update starts anew.
    Superseded,
    /// It exited (or failed to start) before it was ready.
    Exited,
    /// It was not ready within `update.timeout`; its health then, if it has a
    /// healthcheck.
    NotReady {
        timeout: Duration,
        health: Option<Health>,
    },
}

impl Have {
    fn holds_network(&self, network: &str) -> bool {
        self.unknown || self.networks.iter().any(|n| n == network)
    }
}

/// The named volumes, as the planner sees them.
#[derive(Debug, Clone, Default)]
pub struct VolumeInputs {
    pub on_disk: OnDisk,
    pub declared: Declared,
    pub not_before: BTreeMap<String, Instant>,
    pub failed: BTreeSet<String>,
}

impl VolumeInputs {
    /// A declared volume exists (and is recorded as declared).
    fn ready(&self, name: &str) -> bool {
        !self.declared.volumes.contains_key(name)
            || self.on_disk.records.get(name).is_some_and(|r| r.declared)
    }
}

/// The networks, as the planner sees them.
#[derive(Debug, Clone, Default)]
pub struct NetworkInputs {
    /// The bridge networks the manifests want (with `default`), resolved.
    pub desired: BTreeMap<String, NetworkConfig>,
    /// The bridge networks made.
    pub observed: BTreeMap<String, NetworkConfig>,
    /// Declared more than once: left exactly as they are.
    pub frozen: BTreeSet<String>,
    pub not_before: BTreeMap<String, Instant>,
    /// Given up on until their manifest changes.
    pub failed: BTreeSet<String>,
}

impl NetworkInputs {
    /// Made, and made as the manifests want it.
    fn ready(&self, name: &str) -> bool {
        self.desired
            .get(name)
            .is_some_and(|d| self.observed.get(name) == Some(d))
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub desired: BTreeMap<String, Want>,
    pub observed: BTreeMap<String, Have>,
    /// Names whose manifests are in conflict (duplicates): left exactly as they are.
    pub frozen: BTreeSet<String>,
    /// False while some manifest file is invalid and has no last good version: nothing
    /// may be removed, since it might be declared there.
    pub complete: bool,
    /// Per name: no action before this time (backoff after a failure or a crash).
    pub not_before: BTreeMap<String, Instant>,
    /// The named volumes; `None` when they are not planned (`wharf plan`).
    pub volumes: Option<VolumeInputs>,
    /// The networks; `None` when they are not planned (`wharf plan`, offline): every
    /// container's networks then count as made.
    pub networks: Option<NetworkInputs>,
    /// Names given up on until their spec changes: a permanent failure (an unknown
    /// user, a command the image lacks), or any failed start under `Never`.
    pub failed: BTreeSet<String>,
    /// Names whose StartFirst update was rolled back: the old version runs on, under
    /// its own restart policy, until the spec changes again.
    pub rolled_back: BTreeSet<String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Pull the image if needed and start a new container.
    Create { name: String },
    /// Stop the old container, then create it from the new spec; `changed` names the
    /// fields that differ (filled in by the caller, who has both specs).
    Replace { name: String, changed: Vec<String> },
    /// Start the same container again (restart policy, or lost after a reboot).
    Restart { name: String },
    /// StartFirst: pull the new image and start the new version beside the running
    /// one, standby (no ports, no name); `changed` as for `Replace`.
    StartNext { name: String, changed: Vec<String> },
    /// StartFirst: the new version is ready: mark it promoted, move the ports and the
    /// name to it, then stop and remove the old one.
    Promote { name: String },
    /// StartFirst: stop and remove the new version; the old one keeps serving.
    Rollback {
        name: String,
        reason: RollbackReason,
    },
    /// Stop (stop signal, grace, SIGKILL) and remove.
    Remove { name: String },
    /// Create a network, or bring it to its manifest.
    EnsureNetwork { name: String },
    /// Remove a network no manifest declares, once no container is on it.
    RemoveNetwork { name: String },
    /// Create a declared volume, record a change of its manifest, or delete one whose
    /// `Delete` manifest went away once no container mounts it.
    Volume { name: String, action: Action },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Create { name }
            | Step::Replace { name, .. }
            | Step::Restart { name }
            | Step::StartNext { name, .. }
            | Step::Promote { name }
            | Step::Rollback { name, .. }
            | Step::Remove { name }
            | Step::EnsureNetwork { name }
            | Step::RemoveNetwork { name }
            | Step::Volume { name, .. } => name,
        }
    }

    /// `Kind/name`: one step per object at a time (a container and a network may share
    /// a name).
    pub fn key(&self) -> String {
        match self {
            Step::EnsureNetwork { name } | Step::RemoveNetwork { name } => {
                format!("Network/{name}")
            }
            Step::Volume { name, .. } => format!("Volume/{name}"),
            _ => format!("Container/{}", self.name()),
        }
    }
}

/// A plan: the steps to take now, and when to look again for steps held by backoff.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub wake_at: Option<Instant>,
    /// Containers held, with what they wait for (`network backend to be made`,
    /// `db to be healthy`).
    pub waiting: BTreeMap<String, String>,
}

/// What `want` still waits for among its dependencies, as the status says it
/// (`waiting for db to be healthy`); `None` when every condition holds (Compose's
/// `service_started`, `service_healthy`, `service_completed_successfully`).
fn dependency_wait(want: &Want, inputs: &Inputs) -> Option<String> {
    want.depends_on.iter().find_map(|d| {
        let n = &d.name;
        let have = inputs.observed.get(n);
        let met = have.is_some_and(|h| match d.condition {
            DependencyCondition::Started => {
                matches!(h.phase, Phase::Running | Phase::Exited { .. })
            }
            DependencyCondition::Healthy => {
                h.phase == Phase::Running && h.health == Some(Health::Healthy)
            }
            DependencyCondition::Completed => h.phase == Phase::Exited { code: 0 },
        });
        if met {
            return None;
        }
        let declared = inputs.desired.contains_key(n) || inputs.frozen.contains(n);
        let phase = have.map(|h| &h.phase);
        Some(match (d.condition, phase) {
            _ if !declared && have.is_none() => {
                format!("{n}, which no manifest declares: add a Container manifest for it")
            }
            _ if inputs.failed.contains(n) || phase == Some(&Phase::StartFailed) => {
                format!("{n}, which failed to start")
            }
            (DependencyCondition::Started, _) => format!("{n} to start"),
            (DependencyCondition::Healthy, Some(Phase::Running))
                if have.and_then(|h| h.health) == Some(Health::Unhealthy) =>
            {
                format!("{n} to be healthy (it is unhealthy)")
            }
            (DependencyCondition::Healthy, _) => format!("{n} to be healthy"),
            (DependencyCondition::Completed, Some(Phase::Exited { code })) => {
                format!("{n} to complete successfully (it exited with {code})")
            }
            (DependencyCondition::Completed, _) => format!("{n} to complete"),
        })
    })
}

/// The step of a StartFirst update in progress, or what it waits for (with when to
/// look again at the latest).
fn rollout_step(name: &str, want: &Want, next: &Next) -> Result<Step, (String, Duration)> {
    let rollback = |reason| {
        Ok(Step::Rollback {
            name: name.to_owned(),
            reason,
        })
    };
    if next.role == Role::Retired {
        // Promoted already (an agent stopped half way): finish.
        return Ok(Step::Promote {
            name: name.to_owned(),
        });
    }
    let Rollout::StartFirst { timeout } = want.rollout else {
        return rollback(RollbackReason::Superseded);
    };
    // Another spec, or a start cut short (an agent killed, a reboot): started anew.
    if next.hash.as_deref() != Some(want.hash.as_str()) || next.phase == Phase::Lost {
        return rollback(RollbackReason::Superseded);
    }
    if next.phase != Phase::Running {
        return rollback(RollbackReason::Exited);
    }
    let ready = if want.healthcheck {
        next.health == Some(Health::Healthy)
    } else {
        next.age >= READY_AFTER
    };
    if ready {
        return Ok(Step::Promote {
            name: name.to_owned(),
        });
    }
    if next.age >= timeout {
        return rollback(RollbackReason::NotReady {
            timeout,
            health: want
                .healthcheck
                .then_some(next.health.unwrap_or(Health::Starting)),
        });
    }
    let what = if want.healthcheck {
        "to be healthy"
    } else {
        "to have run 5s"
    };
    let mut wake = timeout - next.age;
    if !want.healthcheck {
        wake = wake.min(READY_AFTER - next.age);
    }
    Err((
        format!(
            "the new version (generation {}) {what}; it is rolled back if it is not within {}",
            next.generation,
            crate::units::format_duration(timeout)
        ),
        wake,
    ))
}

/// Whether a container that exited with `code` is restarted under `policy`.
pub fn should_restart(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

/// Computes the steps that bring `observed` to `desired`, in dependency order:
/// networks made first, then container removals (they free names, addresses and
/// ports), then creates, replaces and restarts (only of containers whose networks are
/// made), and last the removal of networks no container is on any more. Steps run in
/// parallel; the order is kept by what each waits for, and a finished step makes the
/// next pass plan what it unblocked.
pub fn plan(inputs: &Inputs, now: Instant) -> Plan {
    let mut out = Plan::default();
    let held = |until: Option<&Instant>, out: &mut Plan| -> bool {
        match until {
            Some(t) if *t > now => {
                out.wake_at = Some(out.wake_at.map_or(*t, |w| w.min(*t)));
                true
            }
            _ => false,
        }
    };
    let nets = inputs.networks.as_ref();
    let users =
        |network: &str| -> bool { inputs.observed.values().any(|h| h.holds_network(network)) };

    if let Some(nets) = nets {
        for (name, want) in &nets.desired {
            if nets.frozen.contains(name) || nets.failed.contains(name) {
                continue;
            }
            match nets.observed.get(name) {
                Some(have) if have == want => continue,
                // Its addressing changes: its containers are replaced first.
                Some(_) if users(name) => continue,
                _ => {}
            }
            if !held(nets.not_before.get(name), &mut out) {
                out.steps.push(Step::EnsureNetwork { name: name.clone() });
            }
        }
    }

    // Volumes: created (or their record updated) first; deleted at the end, once the
    // containers that mount them are gone.
    let mut volume_removals = Vec::new();
    if let Some(vols) = &inputs.volumes {
        let mut in_use = vols.on_disk.held.clone();
        in_use.extend(
            inputs
                .observed
                .values()
                .flat_map(|h| h.volumes.iter().cloned()),
        );
        if inputs.observed.values().any(|h| h.unknown) {
            in_use.extend(vols.on_disk.records.keys().cloned());
        }
        for action in crate::volumes::plan(&vols.on_disk.records, &vols.declared, &in_use) {
            let name = match &action {
                Action::Create { name, .. }
                | Action::Update { name, .. }
                | Action::Delete { name } => name.clone(),
            };
            if vols.failed.contains(&name) || held(vols.not_before.get(&name), &mut out) {
                continue;
            }
            let delete = matches!(action, Action::Delete { .. });
            let step = Step::Volume { name, action };
            if delete {
                volume_removals.push(step);
            } else {
                out.steps.push(step);
            }
        }
    }

    // Networks a container holds that this plan neither replaces nor removes (frozen,
    // unsupported fields, given up on, kept while a file is invalid).
    let stuck_holders: Vec<&Have> = inputs
        .observed
        .iter()
        .filter(|(name, _)| {
            let left_alone = match inputs.desired.get(*name) {
                Some(want) => !want.unsupported.is_empty() || inputs.failed.contains(*name),
                None => !inputs.complete,
            };
            left_alone || inputs.frozen.contains(*name)
        })
        .map(|(_, have)| have)
        .collect();
    let stuck = |network: &str| stuck_holders.iter().any(|h| h.holds_network(network));

    if inputs.complete {
        let going = |n: &String| !inputs.desired.contains_key(n) && !inputs.frozen.contains(n);
        for name in inputs.observed.keys() {
            // Reverse order: a container goes after those going too that depend on it.
            let dependants_going = inputs
                .observed
                .iter()
                .any(|(n, h)| n != name && going(n) && h.depends_on.contains(name));
            if going(name) && !dependants_going && !held(inputs.not_before.get(name), &mut out) {
                out.steps.push(Step::Remove { name: name.clone() });
            }
        }
    }

    for (name, want) in &inputs.desired {
        if inputs.frozen.contains(name) || !want.unsupported.is_empty() {
            continue;
        }
        let waiting_net = nets.and_then(|nets| want.networks.iter().find(|n| !nets.ready(n)));
        let waiting_for = waiting_net
            .map(|n| format!("network {n} to be made"))
            .or_else(|| {
                let vols = inputs.volumes.as_ref()?;
                let v = want.volumes.iter().find(|v| !vols.ready(v))?;
                Some(format!("volume {v} to be made"))
            });
        // An update in progress goes on whatever else the container waits for.
        if let Some(next) = inputs.observed.get(name).and_then(|h| h.next.as_ref()) {
            match rollout_step(name, want, next) {
                Ok(step) => {
                    if !held(inputs.not_before.get(name), &mut out) {
                        out.steps.push(step);
                    }
                }
                Err((what, wake)) => {
                    out.waiting.insert(name.clone(), what);
                    let t = now + wake;
                    out.wake_at = Some(out.wake_at.map_or(t, |w| w.min(t)));
                    // The old version keeps serving meanwhile: restarted by its policy
                    // if it ends (it is the other slot).
                    let current = &inputs.observed[name];
                    let down = match current.phase {
                        Phase::Running => false,
                        Phase::Exited { code } => should_restart(want.restart_policy, code),
                        Phase::StartFailed => want.restart_policy != RestartPolicy::Never,
                        Phase::Lost => true,
                    };
                    if down && !held(inputs.not_before.get(name), &mut out) {
                        out.steps.push(Step::Restart { name: name.clone() });
                    }
                }
            }
            continue;
        }
        if inputs.failed.contains(name) {
            continue;
        }
        // A rolled back update leaves the old version as it is, restarts included.
        let outdated = |have: &Have| {
            have.hash.as_deref() != Some(want.hash.as_str()) && !inputs.rolled_back.contains(name)
        };
        let step = match inputs.observed.get(name) {
            None => Step::Create { name: name.clone() },
            Some(have) if outdated(have) => {
                if waiting_net.is_some_and(|n| !stuck(n)) {
                    // The old container goes now (its network may be changing under
                    // it); the new one starts once the network is made. Not while a
                    // container this plan leaves alone holds the network: it would
                    // never be remade, and this one would stay down.
                    Step::Remove { name: name.clone() }
                } else if matches!(want.rollout, Rollout::StartFirst { .. })
                    && have.phase == Phase::Running
                {
                    // (Nothing to keep serving when the old one is down: recreated.)
                    Step::StartNext {
                        name: name.clone(),
                        changed: Vec::new(),
                    }
                } else {
                    Step::Replace {
                        name: name.clone(),
                        changed: Vec::new(),
                    }
                }
            }
            Some(have) => match have.phase {
                Phase::Running => continue,
                Phase::Exited { code } if !should_restart(want.restart_policy, code) => continue,
                // A start failure is no run: `Never` means never, and the others try
                // again with backoff.
                Phase::StartFailed if want.restart_policy == RestartPolicy::Never => continue,
                // Lost (a reboot, or a create cut short) never finished: it is started
                // again whatever the policy, as the manifest still wants it running.
                Phase::Exited { .. } | Phase::StartFailed | Phase::Lost => {
                    Step::Restart { name: name.clone() }
                }
            },
        };
        if let (Some(what), false) = (&waiting_for, matches!(step, Step::Remove { .. })) {
            out.waiting.insert(name.clone(), what.clone());
            continue;
        }
        // Dependencies hold a new container and a replacement (the old one keeps
        // running meanwhile), not a restart after a crash, as in Compose.
        if matches!(
            step,
            Step::Create { .. } | Step::Replace { .. } | Step::StartNext { .. }
        ) {
            if let Some(what) = dependency_wait(want, inputs) {
                out.waiting.insert(name.clone(), what);
                continue;
            }
        }
        if held(inputs.not_before.get(name), &mut out) {
            continue;
        }
        out.steps.push(step);
    }

    if let (Some(nets), true) = (nets, inputs.complete) {
        for name in nets.observed.keys() {
            if nets.desired.contains_key(name) || nets.frozen.contains(name) || users(name) {
                continue;
            }
            if !held(nets.not_before.get(name), &mut out) {
                out.steps.push(Step::RemoveNetwork { name: name.clone() });
            }
        }
    }
    out.steps.extend(volume_removals);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Builder-style fixture for planner scenarios.
    #[derive(Default)]
    struct World(Inputs);

    impl World {
        fn new() -> Self {
            World(Inputs {
                complete: true,
                ..Default::default()
            })
        }
        fn want(mut self, name: &str, hash: &str, policy: RestartPolicy) -> Self {
            self.0.desired.insert(
                name.into(),
                Want {
                    hash: hash.into(),
                    restart_policy: policy,
                    unsupported: vec![],
                    networks: vec![],
                    volumes: vec![],
                    depends_on: vec![],
                    rollout: Rollout::Recreate,
                    healthcheck: false,
                },
            );
            self
        }
        fn have(mut self, name: &str, hash: &str, phase: Phase) -> Self {
            self.0.observed.insert(
                name.into(),
                Have {
                    hash: Some(hash.into()),
                    phase,
                    networks: vec![],
                    volumes: vec![],
                    unknown: false,
                    health: None,
                    depends_on: vec![],
                    next: None,
                },
            );
            self
        }
        fn start_first(mut self, name: &str, healthcheck: bool) -> Self {
            let w = self.0.desired.get_mut(name).expect("wanted");
            w.rollout = Rollout::StartFirst {
                timeout: Duration::from_secs(60),
            };
            w.healthcheck = healthcheck;
            self
        }
        fn next(mut self, name: &str, hash: &str, phase: Phase, age: Duration) -> Self {
            self.0.observed.get_mut(name).expect("observed").next = Some(Next {
                role: Role::Candidate,
                hash: Some(hash.into()),
                phase,
                health: None,
                age,
                generation: 2,
            });
            self
        }
        fn plan(&self, now: Instant) -> Plan {
            plan(&self.0, now)
        }
    }

    fn steps(p: Plan) -> Vec<Step> {
        p.steps
    }

    #[test]
    fn a_new_manifest_creates_its_container() {
        let w = World::new().want("web", "h1", RestartPolicy::Always);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Create { name: "web".into() }]
        );
    }

    #[test]
    fn a_running_container_with_the_same_hash_is_left_alone() {
        let w =
            World::new()
                .want("web", "h1", RestartPolicy::Always)
                .have("web", "h1", Phase::Running);
        assert!(steps(w.plan(Instant::now())).is_empty());
    }

    #[test]
    fn a_changed_hash_replaces_the_container() {
        let w =
            World::new()
                .want("web", "h2", RestartPolicy::Always)
                .have("web", "h1", Phase::Running);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Replace {
                name: "web".into(),
                changed: vec![]
            }]
        );
    }

    #[test]
    fn a_container_without_manifest_is_removed() {
        let w = World::new().have("old", "h1", Phase::Running);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Remove { name: "old".into() }]
        );
    }

    #[test]
    fn nothing_is_removed_while_an_invalid_file_has_no_last_good_version() {
        let mut w = World::new().have("old", "h1", Phase::Running);
        w.0.complete = false;
        assert!(steps(w.plan(Instant::now())).is_empty());
    }

    #[test]
    fn a_duplicated_name_is_left_exactly_as_it_runs() {
        let mut w =
            World::new()
                .want("web", "h2", RestartPolicy::Always)
                .have("web", "h1", Phase::Running);
        w.0.frozen.insert("web".into());
        w.0.desired.remove("web");
        assert!(steps(w.plan(Instant::now())).is_empty());
    }

    fn depends(mut w: World, name: &str, on: &str, condition: DependencyCondition) -> World {
        if let Some(want) = w.0.desired.get_mut(name) {
            want.depends_on.push(Dependency {
                name: on.into(),
                condition,
            });
        }
        if let Some(have) = w.0.observed.get_mut(name) {
            have.depends_on.push(on.into());
        }
        w
    }

    #[test]
    fn a_container_waits_for_its_dependencies_conditions_and_says_which() {
        let now = Instant::now();
        let base = || {
            let w = World::new()
                .want("app", "a", RestartPolicy::Always)
                .want("db", "d", RestartPolicy::Always)
                .have("db", "d", Phase::Running);
            depends(w, "app", "db", DependencyCondition::Healthy)
        };
        let mut w = base();
        w.0.observed.get_mut("db").unwrap().health = Some(Health::Starting);
        let p = w.plan(now);
        assert!(p.steps.is_empty(), "{p:?}");
        assert_eq!(p.waiting["app"], "db to be healthy");
        w.0.observed.get_mut("db").unwrap().health = Some(Health::Unhealthy);
        assert_eq!(
            w.plan(now).waiting["app"],
            "db to be healthy (it is unhealthy)"
        );
        w.0.observed.get_mut("db").unwrap().health = Some(Health::Healthy);
        assert_eq!(steps(w.plan(now)), [Step::Create { name: "app".into() }]);

        // Completed: a `Never` job that exited 0; another exit code is said.
        let w = World::new()
            .want("app", "a", RestartPolicy::Always)
            .want("migrate", "m", RestartPolicy::Never)
            .have("migrate", "m", Phase::Exited { code: 3 });
        let w = depends(w, "app", "migrate", DependencyCondition::Completed);
        assert_eq!(
            w.plan(now).waiting["app"],
            "migrate to complete successfully (it exited with 3)"
        );
        let w = w.have("migrate", "m", Phase::Exited { code: 0 });
        assert_eq!(steps(w.plan(now)), [Step::Create { name: "app".into() }]);

        // A failed or undeclared dependency blocks only its dependants.
        let mut w = World::new()
            .want("app", "a", RestartPolicy::Always)
            .want("db", "d", RestartPolicy::Always)
            .want("other", "o", RestartPolicy::Always)
            .want("lost", "l", RestartPolicy::Always);
        w.0.failed.insert("db".into());
        let w = depends(w, "app", "db", DependencyCondition::Started);
        let w = depends(w, "lost", "ghost", DependencyCondition::Started);
        let p = w.plan(now);
        assert_eq!(p.waiting["app"], "db, which failed to start");
        assert!(p.waiting["lost"].starts_with("ghost, which no manifest declares"));
        assert_eq!(
            p.steps,
            [Step::Create {
                name: "other".into()
            }]
        );
    }

    #[test]
    fn a_replacement_waits_for_dependencies_but_a_crash_restart_does_not() {
        let now = Instant::now();
        let w = World::new()
            .want("app", "a2", RestartPolicy::Always)
            .have("app", "a1", Phase::Running)
            .want("db", "d", RestartPolicy::Always);
        let w = depends(w, "app", "db", DependencyCondition::Started);
        let p = w.plan(now);
        assert_eq!(
            p.steps,
            [Step::Create { name: "db".into() }],
            "the old app keeps running"
        );
        assert_eq!(p.waiting["app"], "db to start");
        let w = w.have("app", "a2", Phase::Exited { code: 1 });
        assert!(steps(w.plan(now)).contains(&Step::Restart { name: "app".into() }));
    }

    #[test]
    fn removal_runs_in_reverse_order_of_dependencies() {
        let now = Instant::now();
        let w = World::new()
            .have("app", "a", Phase::Running)
            .have("db", "d", Phase::Running);
        let w = depends(w, "app", "db", DependencyCondition::Healthy);
        assert_eq!(steps(w.plan(now)), [Step::Remove { name: "app".into() }]);
        let w = World::new().have("db", "d", Phase::Running);
        assert_eq!(steps(w.plan(now)), [Step::Remove { name: "db".into() }]);
        // A dependant that stays does not hold it.
        let w = World::new()
            .want("app", "a", RestartPolicy::Always)
            .have("app", "a", Phase::Running)
            .have("db", "d", Phase::Running);
        let w = depends(w, "app", "db", DependencyCondition::Started);
        assert_eq!(steps(w.plan(now)), [Step::Remove { name: "db".into() }]);
    }

    #[test]
    fn a_container_of_a_newer_record_keeps_every_network_and_volume() {
        // Its record was refused unread: it may hold any network or volume.
        let mut w = World::new().have("future", "h", Phase::Running);
        w.0.frozen.insert("future".into());
        w.0.observed.get_mut("future").unwrap().unknown = true;
        let mut w = with_networks(w, &[], &[("back", "10.1.0.0/24")]);
        w.0.volumes = Some(VolumeInputs {
            on_disk: crate::volumes::OnDisk {
                records: BTreeMap::from([(
                    "data".to_owned(),
                    crate::volumes::Record {
                        declared: true,
                        reclaim_policy: crate::manifest::ReclaimPolicy::Delete,
                        ..Default::default()
                    },
                )]),
                held: BTreeSet::new(),
            },
            declared: crate::volumes::Declared {
                complete: true,
                ..Default::default()
            },
            ..Default::default()
        });
        let planned = steps(w.plan(Instant::now()));
        assert!(
            !planned.iter().any(|s| matches!(
                s,
                Step::RemoveNetwork { .. }
                    | Step::Remove { .. }
                    | Step::Volume {
                        action: Action::Delete { .. },
                        ..
                    }
            )),
            "{planned:?}"
        );
        // Its manifest gone, the volume is only marked for deletion.
        assert!(
            planned.iter().any(|s| matches!(
                s,
                Step::Volume { action: Action::Update { record, .. }, .. } if record.delete_requested
            )),
            "{planned:?}"
        );
        // Without it, both go.
        w.0.observed.clear();
        w.0.frozen.clear();
        let planned = steps(w.plan(Instant::now()));
        assert!(
            planned
                .iter()
                .any(|s| matches!(s, Step::RemoveNetwork { .. })),
            "{planned:?}"
        );
        assert!(
            planned.iter().any(|s| matches!(
                s,
                Step::Volume {
                    action: Action::Delete { .. },
                    ..
                }
            )),
            "{planned:?}"
        );
    }

    #[test]
    fn exited_container_with_always_policy_is_restarted_after_backoff() {
        let now = Instant::now();
        let mut w = World::new().want("web", "h1", RestartPolicy::Always).have(
            "web",
            "h1",
            Phase::Exited { code: 0 },
        );
        w.0.not_before
            .insert("web".into(), now + Duration::from_secs(2));
        let p = w.plan(now);
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + Duration::from_secs(2)));
        assert_eq!(
            steps(w.plan(now + Duration::from_secs(3))),
            [Step::Restart { name: "web".into() }]
        );
    }

    #[test]
    fn on_failure_policy_restarts_only_non_zero_exits() {
        let w = World::new()
            .want("ok", "h", RestartPolicy::OnFailure)
            .have("ok", "h", Phase::Exited { code: 0 })
            .want("bad", "h", RestartPolicy::OnFailure)
            .have("bad", "h", Phase::Exited { code: 2 });
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Restart { name: "bad".into() }]
        );
    }

    #[test]
    fn never_policy_leaves_an_exited_container_exited() {
        let w = World::new().want("job", "h", RestartPolicy::Never).have(
            "job",
            "h",
            Phase::Exited { code: 1 },
        );
        assert!(steps(w.plan(Instant::now())).is_empty());
    }

    #[test]
    fn a_lost_container_is_started_again_even_with_never_policy() {
        let w = World::new()
            .want("job", "h", RestartPolicy::Never)
            .have("job", "h", Phase::Lost);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Restart { name: "job".into() }]
        );
    }

    #[test]
    fn unsupported_fields_block_only_their_own_container() {
        let mut w = World::new().want("a", "h", RestartPolicy::Always).want(
            "b",
            "h",
            RestartPolicy::Always,
        );
        w.0.desired.get_mut("a").unwrap().unsupported = vec!["ports"];
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Create { name: "b".into() }]
        );
    }

    #[test]
    fn removals_come_before_creates() {
        let w =
            World::new()
                .want("new", "h", RestartPolicy::Always)
                .have("old", "h", Phase::Running);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [
                Step::Remove { name: "old".into() },
                Step::Create { name: "new".into() }
            ]
        );
    }

    fn with_networks(mut w: World, desired: &[(&str, &str)], made: &[(&str, &str)]) -> World {
        let cfg = |name: &str, subnet: &str| NetworkConfig {
            name: name.into(),
            kind: crate::net::driver::NetworkKind::Bridge,
            subnet: subnet.parse().unwrap(),
            gateway: std::net::Ipv4Addr::new(10, 0, 0, 1),
            internal: false,
            bridge: format!("br-{name}"),
        };
        w.0.networks = Some(NetworkInputs {
            desired: desired
                .iter()
                .map(|(n, s)| (n.to_string(), cfg(n, s)))
                .collect(),
            observed: made
                .iter()
                .map(|(n, s)| (n.to_string(), cfg(n, s)))
                .collect(),
            ..Default::default()
        });
        w
    }

    fn on(mut w: World, container: &str, network: &str) -> World {
        if let Some(want) = w.0.desired.get_mut(container) {
            want.networks = vec![network.into()];
        }
        if let Some(have) = w.0.observed.get_mut(container) {
            have.networks = vec![network.into()];
        }
        w
    }

    #[test]
    fn a_network_is_made_before_the_container_that_needs_it_starts() {
        let w = on(
            World::new().want("app", "h", RestartPolicy::Always),
            "app",
            "back",
        );
        let w = with_networks(w, &[("back", "10.1.0.0/24")], &[]);
        let p = w.plan(Instant::now());
        assert_eq!(
            p.steps,
            [Step::EnsureNetwork {
                name: "back".into()
            }]
        );
        assert_eq!(p.waiting["app"], "network back to be made");
        let w = with_networks(w, &[("back", "10.1.0.0/24")], &[("back", "10.1.0.0/24")]);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Create { name: "app".into() }]
        );
    }

    #[test]
    fn a_network_removed_with_its_containers_goes_once_they_are_gone() {
        let w = on(World::new().have("app", "h", Phase::Running), "app", "back");
        let w = with_networks(w, &[], &[("back", "10.1.0.0/24")]);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Remove { name: "app".into() }],
            "the network waits for its container"
        );
        let w = with_networks(World::new(), &[], &[("back", "10.1.0.0/24")]);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::RemoveNetwork {
                name: "back".into()
            }]
        );
        let mut w = w;
        w.0.complete = false;
        assert!(
            steps(w.plan(Instant::now())).is_empty(),
            "kept while a file is invalid"
        );
    }

    #[test]
    fn a_subnet_change_takes_the_old_containers_down_first_then_remakes_the_network() {
        let w = on(
            World::new()
                .want("app", "h2", RestartPolicy::Always)
                .have("app", "h1", Phase::Running),
            "app",
            "back",
        );
        let w = with_networks(w, &[("back", "10.2.0.0/24")], &[("back", "10.1.0.0/24")]);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Remove { name: "app".into() }]
        );
        let w = on(
            World::new().want("app", "h2", RestartPolicy::Always),
            "app",
            "back",
        );
        let w = with_networks(w, &[("back", "10.2.0.0/24")], &[("back", "10.1.0.0/24")]);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::EnsureNetwork {
                name: "back".into()
            }]
        );
    }

    #[test]
    fn a_network_held_by_a_container_left_alone_does_not_take_the_others_down() {
        let w = on(
            on(
                World::new()
                    .want("app", "h2", RestartPolicy::Always)
                    .have("app", "h1", Phase::Running)
                    .have("dup", "h1", Phase::Running),
                "app",
                "back",
            ),
            "dup",
            "back",
        );
        let mut w = with_networks(w, &[("back", "10.2.0.0/24")], &[("back", "10.1.0.0/24")]);
        w.0.frozen.insert("dup".into());
        let p = w.plan(Instant::now());
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.waiting["app"], "network back to be made");
    }

    #[test]
    fn a_failed_removal_waits_out_its_backoff() {
        let now = Instant::now();
        let mut w = World::new().have("old", "h", Phase::Running);
        w.0.not_before
            .insert("old".into(), now + Duration::from_millis(200));
        let p = w.plan(now);
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + Duration::from_millis(200)));
    }

    #[test]
    fn a_start_first_update_of_a_running_container_starts_the_new_version_beside_it() {
        let w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", true)
            .have("web", "h1", Phase::Running);
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::StartNext {
                name: "web".into(),
                changed: vec![]
            }]
        );
        // Nothing serves when it is down: recreated.
        let w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", true)
            .have("web", "h1", Phase::Exited { code: 1 });
        assert!(matches!(
            steps(w.plan(Instant::now()))[..],
            [Step::Replace { .. }]
        ));
    }

    #[test]
    fn without_a_healthcheck_the_new_version_takes_over_after_five_seconds_of_running() {
        let now = Instant::now();
        let w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", false)
            .have("web", "h1", Phase::Running)
            .next("web", "h2", Phase::Running, Duration::from_secs(4));
        let p = w.plan(now);
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + Duration::from_secs(1)));
        assert!(p.waiting["web"].contains("generation 2) to have run 5s"));
        let w = w.next("web", "h2", Phase::Running, READY_AFTER);
        assert_eq!(steps(w.plan(now)), [Step::Promote { name: "web".into() }]);
    }

    #[test]
    fn a_new_version_not_healthy_by_the_deadline_or_exited_is_rolled_back() {
        let now = Instant::now();
        let w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", true)
            .have("web", "h1", Phase::Running)
            .next("web", "h2", Phase::Running, Duration::from_secs(59));
        let p = w.plan(now);
        assert!(p.steps.is_empty());
        assert_eq!(p.wake_at, Some(now + Duration::from_secs(1)));
        let late = w.next("web", "h2", Phase::Running, Duration::from_secs(60));
        assert_eq!(
            steps(late.plan(now)),
            [Step::Rollback {
                name: "web".into(),
                reason: RollbackReason::NotReady {
                    timeout: Duration::from_secs(60),
                    health: Some(Health::Starting)
                }
            }]
        );
        let exited = late.next("web", "h2", Phase::Exited { code: 2 }, Duration::ZERO);
        assert!(matches!(
            steps(exited.plan(now))[..],
            [Step::Rollback {
                reason: RollbackReason::Exited,
                ..
            }]
        ));
        // The manifest changed again: this one goes, the next update starts anew.
        let stale = exited.next("web", "h1b", Phase::Running, Duration::ZERO);
        assert!(matches!(
            steps(stale.plan(now))[..],
            [Step::Rollback {
                reason: RollbackReason::Superseded,
                ..
            }]
        ));
    }

    #[test]
    fn a_rolled_back_container_is_restarted_as_it_was_and_not_updated_again() {
        let mut w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", true)
            .have("web", "h1", Phase::Running);
        w.0.rolled_back.insert("web".into());
        assert!(steps(w.plan(Instant::now())).is_empty());
        let w = w.have("web", "h1", Phase::Exited { code: 1 });
        let mut w = w;
        w.0.rolled_back.insert("web".into());
        assert_eq!(
            steps(w.plan(Instant::now())),
            [Step::Restart { name: "web".into() }]
        );
    }

    #[test]
    fn the_old_version_that_ends_during_an_update_is_restarted_and_a_lost_new_one_started_anew() {
        let now = Instant::now();
        let w = World::new()
            .want("web", "h2", RestartPolicy::Always)
            .start_first("web", true)
            .have("web", "h1", Phase::Exited { code: 1 })
            .next("web", "h2", Phase::Running, Duration::from_secs(1));
        let p = w.plan(now);
        assert_eq!(p.steps, [Step::Restart { name: "web".into() }]);
        assert!(p.waiting["web"].contains("to be healthy"));
        // A new version cut short (an agent killed in its start, a reboot) is no failure.
        let lost =
            w.have("web", "h1", Phase::Running)
                .next("web", "h2", Phase::Lost, Duration::ZERO);
        assert_eq!(
            steps(lost.plan(now)),
            [Step::Rollback {
                name: "web".into(),
                reason: RollbackReason::Superseded
            }]
        );
    }
}
