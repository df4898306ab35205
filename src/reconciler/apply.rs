//! Apply: runs the planner's steps through the `Runtime`, `Images` and `Network`
//! seams, one task per object, and builds the status snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::memo::Memo;
use super::plan::{self, Inputs, NetworkInputs, Step, VolumeInputs};
use super::report::container_status;
use super::status::{ContainerState, ManifestError, ManifestReport, StatusSnapshot};
use super::task::{Memos, NetworkTask, Task, VolumeTask};
use super::Images;
use crate::manifest::DesiredState;
use crate::net::driver::NetworkConfig;
use crate::net::{Network, NetworkStatus};
use crate::runtime::instance::Role;
use crate::runtime::{Observed, ObservedState, Runtime, RuntimeError};
use crate::volumes::Volumes;

/// The seams a reconciler drives: fakes in tests, the real ones in the agent.
pub struct Seams<R, I, N, V> {
    pub runtime: Arc<R>,
    pub images: Arc<I>,
    pub network: Arc<N>,
    pub volumes: Arc<V>,
}

/// Converges containers, networks and volumes; generic over its seams (runtime, image
/// store, network service, volume store), so tests use small fakes and production the
/// real ones.
pub struct Reconciler<R: Runtime, I: Images, N: Network, V: Volumes> {
    runtime: Arc<R>,
    images: Arc<I>,
    network: Arc<N>,
    volumes: Arc<V>,
    memos: Memos,
    net_memos: Memos,
    vol_memos: Memos,
    /// The steps running, by `Kind/name` ([`Step::key`]): one per object at a time.
    inflight: HashMap<String, Step>,
    /// The named volumes each running container step may mount, by its key: in use
    /// until it ends (a create started before its manifest and `Delete` volume were
    /// removed would otherwise make the volume again, implicitly, after its deletion).
    inflight_volumes: HashMap<String, Vec<String>>,
    /// Containers held until a network or volume is made or a dependency is ready, with
    /// what (from the last plan).
    waiting: BTreeMap<String, String>,
    /// The health of running containers with a healthcheck, by name, with their init's
    /// pid (from the health monitor, see [`Reconciler::set_health`]).
    health: BTreeMap<String, (i32, crate::health::Health)>,
    /// Why the networks could not be resolved, if they could not.
    resolve_error: Option<String>,
    /// The runtime instances of the last pass (see [`crate::runtime::instance`]).
    instances: Vec<String>,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl<R: Runtime, I: Images, N: Network, V: Volumes> Reconciler<R, I, N, V> {
    pub fn new(seams: Seams<R, I, N, V>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Reconciler {
            runtime: seams.runtime,
            images: seams.images,
            network: seams.network,
            volumes: seams.volumes,
            memos: Arc::default(),
            net_memos: Arc::default(),
            vol_memos: Arc::default(),
            inflight: HashMap::new(),
            inflight_volumes: HashMap::new(),
            waiting: BTreeMap::new(),
            health: BTreeMap::new(),
            resolve_error: None,
            instances: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Waits until a step finishes; returns its object's `Kind/name`.
    pub async fn step_done(&mut self) -> Option<String> {
        let key = self.done_rx.recv().await?;
        self.inflight.remove(&key);
        self.inflight_volumes.remove(&key);
        Some(key)
    }

    /// The health of running containers (name → init pid, health), for `dependsOn:
    /// Healthy`; set before a pass.
    pub fn set_health(&mut self, health: BTreeMap<String, (i32, crate::health::Health)>) {
        self.health = health;
    }

    /// Whether the last plan held some container (for a network, a volume or a
    /// dependency): then a change of health may let it go.
    pub fn holds_any(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether any step is still running.
    pub fn busy(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// The runtime instances the last pass saw (`web`, and `web.alt` during or after a
    /// StartFirst update) and those a step in flight may be making (either slot): what
    /// may own a cgroup.
    pub fn known_instances(&self) -> Vec<String> {
        let mut known = self.instances.clone();
        known.extend(
            self.inflight
                .keys()
                .filter_map(|k| k.strip_prefix("Container/"))
                .flat_map(|n| [n.to_owned(), crate::runtime::instance::alternate(n)]),
        );
        known
    }

    /// At agent start, before the first pass: makes the declared networks (so the
    /// containers that still run are re-attached to what they were on), then re-adopts
    /// those containers and removes what belongs to containers that are gone.
    pub async fn adopt(&mut self, desired: &DesiredState) -> Result<(), RuntimeError> {
        if let Some(nets) = self.network_inputs(desired).await {
            for (name, net) in nets
                .desired
                .iter()
                .filter(|(n, d)| nets.observed.get(*n) != Some(*d) && !nets.frozen.contains(*n))
            {
                if let Err(e) = self.network.ensure(net).await {
                    tracing::warn!(network = %name, error = %e, "make network");
                }
            }
        }
        let observed = self.runtime.list().await?;
        self.network.adopt(&observed).await;
        Ok(())
    }

    /// Restores the kernel objects of the networks made: a deleted bridge or veth;
    /// with `firewall`, a flushed or cut down nftables table. Called when the kernel
    /// says they changed, and at the periodic resync.
    pub async fn repair_networks(&self, firewall: bool) {
        if let Err(e) = self.network.repair(firewall).await {
            tracing::warn!(error = %e, "repair networks");
        }
    }

    /// The periodic resync's sweep: whatever networking still holds for a container
    /// the runtime no longer lists (a detach that failed after its removal) is undone.
    /// Containers with a step in flight count as known: one being created is attached
    /// before its record exists.
    pub async fn sweep_networks(&self) {
        let mut known: Vec<String> = match self.runtime.list().await {
            Ok(list) => list.into_iter().map(|o| o.name).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "list containers for the network sweep");
                return;
            }
        };
        // Either slot: a StartFirst update attaches the other one.
        known.extend(
            self.inflight
                .keys()
                .filter_map(|k| k.strip_prefix("Container/"))
                .flat_map(|n| [n.to_owned(), crate::runtime::instance::alternate(n)]),
        );
        self.network.forget_others(&known).await;
    }

    /// The planner's view of the networks; `None` if they cannot be resolved (the
    /// reason is kept for the status).
    async fn network_inputs(&mut self, desired: &DesiredState) -> Option<NetworkInputs> {
        let declared: Vec<crate::manifest::Network> = desired
            .networks
            .values()
            .map(|n| n.object.clone())
            .collect();
        let resolved = match self.network.resolve(&declared).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "resolve networks");
                self.resolve_error = Some(e.to_string());
                return None;
            }
        };
        self.resolve_error = None;
        Some(NetworkInputs {
            desired: resolved.into_iter().map(|n| (n.name.clone(), n)).collect(),
            observed: self.network.list().await,
            frozen: desired
                .frozen
                .iter()
                .filter_map(|k| k.strip_prefix("Network/"))
                .map(str::to_owned)
                .collect(),
            ..Default::default()
        })
    }

    /// One level-triggered pass: observe, plan, start the steps not already running,
    /// and return the status plus when to look again for steps held by backoff.
    pub async fn pass(
        &mut self,
        desired: &DesiredState,
    ) -> Result<(StatusSnapshot, Option<Instant>), RuntimeError> {
        let listed = self.runtime.list().await?;
        self.instances = listed.iter().map(|o| o.name.clone()).collect();
        // By container: the instance that serves, and the other one during an update.
        let (observed, others) = crate::runtime::instance::by_container(listed);
        let networks = self.network_inputs(desired).await;
        let mut on_disk = self.volumes.list().await;
        on_disk
            .held
            .extend(self.inflight_volumes.values().flatten().cloned());
        let now = Instant::now();
        let mut inputs = self.inputs(desired, &observed, &others, now);
        inputs.volumes = Some(self.volume_inputs(desired, on_disk));
        inputs.networks = match networks {
            Some(nets) => Some(self.network_backoff(nets)),
            // Unresolvable: nothing is made or removed, and containers wait for nothing
            // more than the networks already made.
            None => {
                let made = self.network.list().await;
                Some(NetworkInputs {
                    desired: made.clone(),
                    observed: made,
                    ..Default::default()
                })
            }
        };
        let plan = plan::plan(&inputs, now);
        let declared_volumes = inputs
            .volumes
            .as_ref()
            .map(|v| v.declared.clone())
            .unwrap_or_default();
        let resolved = inputs.networks.map(|n| n.desired).unwrap_or_default();
        for mut step in plan.steps {
            let key = step.key();
            super::inputs::explain(&mut step, desired, &observed);
            if self.inflight.contains_key(&key) {
                continue;
            }
            tracing::info!(object = %key, ?step, "apply");
            self.inflight.insert(key.clone(), step.clone());
            let done = self.done_tx.clone();
            match &step {
                Step::Volume { action, .. } => {
                    let task = VolumeTask {
                        volumes: self.volumes.clone(),
                        memos: self.vol_memos.clone(),
                        action: action.clone(),
                        hash: volume_memo_hash(&declared_volumes, step.name()),
                    };
                    tokio::spawn(async move {
                        task.run().await;
                        let _ = done.send(key);
                    });
                }
                Step::EnsureNetwork { name } | Step::RemoveNetwork { name } => {
                    let task = NetworkTask {
                        network: self.network.clone(),
                        memos: self.net_memos.clone(),
                        config: resolved.get(name).cloned(),
                    };
                    tokio::spawn(async move {
                        task.run(step).await;
                        let _ = done.send(key);
                    });
                }
                _ => {
                    let name = step.name();
                    if let Some(c) = desired.containers.get(name) {
                        let volumes = c.object.volume_names().map(str::to_owned).collect();
                        self.inflight_volumes.insert(key.clone(), volumes);
                    }
                    let task = Task {
                        runtime: self.runtime.clone(),
                        images: self.images.clone(),
                        network: self.network.clone(),
                        memos: self.memos.clone(),
                        desired: desired.containers.get(name).cloned(),
                        hash: desired
                            .containers
                            .get(name)
                            .map(|c| super::inputs::effective_hash(&c.object, desired))
                            .unwrap_or_default(),
                        observed: observed.get(name).cloned(),
                        other: others.get(name).cloned(),
                    };
                    tokio::spawn(async move {
                        task.run(step).await;
                        let _ = done.send(key);
                    });
                }
            }
        }
        self.waiting = plan.waiting;
        let mut status = self.status(desired, &observed, &others);
        status.networks = self.network_statuses(&resolved).await;
        Ok((status, plan.wake_at))
    }

    /// Why each volume is not as its manifest says yet, by name, with the next try:
    /// what `/v1/volumes` shows beside the volume task's list.
    pub fn volume_messages(&self) -> BTreeMap<String, String> {
        let now = Instant::now();
        let memos = self.vol_memos.lock().expect("memo lock");
        memos
            .iter()
            .filter_map(|(name, m)| {
                let message = m.message.as_ref()?;
                Some((
                    name.clone(),
                    match m.next_try(now) {
                        Some(t) => format!(
                            "{message}; next try at {}",
                            crate::runtime::records::rfc3339_ms(super::report::wall_ms(t))
                        ),
                        None => message.clone(),
                    },
                ))
            })
            .collect()
    }

    /// The volumes for the planner, with their backoff from their memos (a memo is
    /// about one declared policy: a change starts afresh).
    fn volume_inputs(
        &self,
        desired: &DesiredState,
        on_disk: crate::volumes::OnDisk,
    ) -> VolumeInputs {
        let declared = super::inputs::declared_volumes(desired);
        let mut vols = VolumeInputs {
            on_disk,
            declared,
            ..Default::default()
        };
        let mut memos = self.vol_memos.lock().expect("memo lock");
        memos.retain(|name, _| {
            vols.declared.volumes.contains_key(name) || vols.on_disk.records.contains_key(name)
        });
        for (name, memo) in memos.iter_mut() {
            let hash = volume_memo_hash(&vols.declared, name);
            if memo.hash != hash {
                *memo = Memo {
                    hash,
                    ..Default::default()
                };
            }
            if let Some((t, _)) = memo.not_before {
                vols.not_before.insert(name.clone(), t);
            }
        }
        vols
    }

    /// Adds the networks' backoff and given-up state to the planner's inputs, from
    /// their memos (a new config starts a fresh memo).
    fn network_backoff(&self, mut nets: NetworkInputs) -> NetworkInputs {
        let mut memos = self.net_memos.lock().expect("memo lock");
        memos.retain(|name, _| nets.desired.contains_key(name) || nets.observed.contains_key(name));
        for (name, memo) in memos.iter_mut() {
            let hash = nets.desired.get(name).map(config_hash).unwrap_or_default();
            if memo.hash != hash {
                *memo = Memo {
                    hash,
                    ..Default::default()
                };
            }
            if let Some((t, _)) = memo.not_before {
                nets.not_before.insert(name.clone(), t);
            }
            if memo.gave_up {
                nets.failed.insert(name.clone());
            }
        }
        nets
    }

    /// `/v1/networks`: what the network service shows, with why a network is not
    /// (yet) as declared.
    async fn network_statuses(
        &self,
        resolved: &BTreeMap<String, NetworkConfig>,
    ) -> Vec<NetworkStatus> {
        let memos = self.net_memos.lock().expect("memo lock").clone();
        let mut statuses = self.network.statuses().await;
        for s in &mut statuses {
            let key = format!("Network/{}", s.name);
            let memo = memos.get(&s.name);
            s.message = match (
                memo.and_then(|m| m.message.as_ref()),
                self.inflight.get(&key),
            ) {
                (Some(m), _) => Some(match memo.and_then(|m| m.next_try(Instant::now())) {
                    Some(t) => format!(
                        "{m}; next try at {}",
                        crate::runtime::records::rfc3339_ms(super::report::wall_ms(t))
                    ),
                    None => m.clone(),
                }),
                (None, Some(Step::EnsureNetwork { .. })) => Some("creating".into()),
                (None, Some(Step::RemoveNetwork { .. })) => {
                    Some("removing: no manifest declares it".into())
                }
                _ if !resolved.contains_key(&s.name)
                    && s.driver == crate::net::driver::NetworkKind::Bridge =>
                {
                    let users: Vec<&str> = s.containers.iter().map(|m| m.name.as_str()).collect();
                    Some(format!(
                        "removed from the manifests; kept while it is still used by container(s) {}",
                        users.join(", ")
                    ))
                }
                _ => self.resolve_error.clone(),
            };
        }
        statuses
    }

    fn inputs(
        &self,
        desired: &DesiredState,
        observed: &BTreeMap<String, Observed>,
        others: &BTreeMap<String, (Observed, Role)>,
        now: Instant,
    ) -> Inputs {
        let mut inputs = super::inputs::inputs(desired, observed);
        for (name, have) in &mut inputs.observed {
            if let Some(o) = observed.get(name) {
                have.health = self.health_of(o);
            }
        }
        super::inputs::add_others(&mut inputs, others, |o| self.health_of(o));
        let mut memos = self.memos.lock().expect("memo lock");
        memos
            .retain(|name, _| desired.containers.contains_key(name) || observed.contains_key(name));
        for (name, want) in &inputs.desired {
            let memo = memos.entry(name.clone()).or_default();
            if memo.hash != want.hash {
                *memo = Memo {
                    hash: want.hash.clone(),
                    ..Default::default()
                };
            }
            // Account for a new exit once: a quick exit grows the backoff, a long run
            // resets it (a crash loop slows down; a rare crash restarts at once).
            if let Some(o) = observed.get(name) {
                if let ObservedState::Exited(exit) = &o.state {
                    if exit.error.is_none()
                        && plan::should_restart(want.restart_policy, exit.exit_code)
                    {
                        memo.note_exit(exit, o.started_at, now);
                    }
                }
            }
            if let Some((t, _)) = memo.not_before {
                inputs.not_before.insert(name.clone(), t);
            }
            if memo.gave_up {
                inputs.failed.insert(name.clone());
            }
            // A rollback holds for the rollout it happened under: a longer timeout, or
            // another strategy, tries again.
            if memo
                .rollback
                .as_ref()
                .is_some_and(|(_, r)| *r != want.rollout)
            {
                memo.rollback = None;
            }
            if memo.rollback.is_some() {
                inputs.rolled_back.insert(name.clone());
            }
        }
        // A removal that failed (a file it cannot delete) waits too, not replanned at
        // every finished step.
        for (name, memo) in memos.iter() {
            if let (false, Some((t, _))) = (inputs.desired.contains_key(name), memo.not_before) {
                inputs.not_before.insert(name.clone(), t);
            }
        }
        inputs
    }

    /// The health of a running instance, from the monitor (keyed by instance and pid).
    fn health_of(&self, o: &Observed) -> Option<crate::health::Health> {
        let ObservedState::Running(r) = &o.state else {
            return None;
        };
        self.health
            .get(&o.name)
            .filter(|(p, _)| *p == r.pid)
            .map(|(_, h)| *h)
    }

    fn status(
        &self,
        desired: &DesiredState,
        observed: &BTreeMap<String, Observed>,
        others: &BTreeMap<String, (Observed, Role)>,
    ) -> StatusSnapshot {
        let memos = self.memos.lock().expect("memo lock").clone();
        let now = Instant::now();
        let mut containers = Vec::new();
        let mut standby_targets = Vec::new();
        for (name, c) in &desired.containers {
            let memo = memos.get(name).cloned().unwrap_or_default();
            let mut s = container_status(
                name,
                Some(c),
                observed.get(name),
                &memo,
                self.inflight.get(&format!("Container/{name}")),
                now,
            );
            s.spec_hash = Some(super::inputs::effective_hash(&c.object, desired));
            super::report::note_outdated(
                &mut s,
                observed
                    .get(name)
                    .and_then(|o| o.meta.as_ref())
                    .map(|m| m.hash.as_str()),
                &memo,
            );
            if let (Some((why, _)), ContainerState::Running, None) =
                (&memo.rollback, s.state, &s.message)
            {
                s.message = Some(why.clone());
            }
            if let (Some(what), None) = (self.waiting.get(name), &s.message) {
                s.message = Some(format!("waiting for {what}"));
            }
            // A StartFirst update's new version is probed as it starts: its health
            // decides the update.
            if let Some((o, Role::Candidate)) = others.get(name) {
                standby_targets.extend(super::report::health_target(o, false));
            }
            let missing = super::inputs::missing_networks(&c.object, desired);
            if !missing.is_empty() {
                s.message = Some(format!(
                    "network {} is not declared: add a Network manifest for it; the container is left as it runs until then",
                    missing.join(", ")
                ));
            }
            containers.push(s);
        }
        for (name, o) in observed {
            if desired.containers.contains_key(name) {
                continue;
            }
            let memo = memos.get(name).cloned().unwrap_or_default();
            let inflight = self.inflight.get(&format!("Container/{name}"));
            let mut s = container_status(name, None, Some(o), &memo, inflight, now);
            if desired.frozen.contains(&format!("Container/{name}")) {
                s.message = Some(format!(
                    "Container/{name} is defined more than once (see /v1/manifests); it is left as it runs until one definition is removed"
                ));
            } else if !desired.complete {
                s.message = Some("kept: a manifest file is invalid and may declare it".into());
            }
            containers.push(s);
        }
        let manifests = desired
            .reports
            .iter()
            .map(|r| ManifestReport {
                file: r.file.clone(),
                objects: r.objects.clone(),
                errors: r
                    .errors
                    .iter()
                    .map(|d| ManifestError {
                        message: d.message.clone(),
                        line: d.line,
                        column: d.column,
                    })
                    .collect(),
            })
            .collect();
        StatusSnapshot {
            containers,
            manifests,
            images: Vec::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
            standby_health_targets: standby_targets,
        }
    }
}

/// What identifies a network's resolved config for its memo: a change starts afresh.
pub(super) fn config_hash(c: &NetworkConfig) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// What a volume's memo is about: its declared reclaim policy (none once undeclared).
fn volume_memo_hash(declared: &crate::volumes::Declared, name: &str) -> String {
    format!("{:?}", declared.volumes.get(name))
}
