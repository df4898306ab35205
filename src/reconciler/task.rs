//! The work of one step on one container: pull, start, stop, remove, through the
//! `Runtime` and `Images` seams. Its outcome goes to the container's memo.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::memo::Memo;
use super::plan::{RollbackReason, Step};
use super::Images;
use crate::class::{Classify, ErrorClass};
use crate::images::ImageError;
use crate::manifest::{Container, RestartPolicy, Sourced};
use crate::net::driver::{NetError, NetworkConfig, PortMapping};
use crate::net::{AttachSpec, Network};
use crate::runtime::instance::Role;
use crate::runtime::process::{plan_process, resolve_capabilities, ProcessRequest};
use crate::runtime::{
    ContainerMeta, NetworkMode, Observed, ObservedState, Runtime, RuntimeError, StartRequest,
};
use crate::volumes::{Action, Volumes};

pub use crate::manifest::DEFAULT_STOP_GRACE;

pub(super) type Memos = Arc<Mutex<std::collections::HashMap<String, Memo>>>;

/// Why a step failed, by the seam that failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("image {reference}: {source}")]
    Image {
        reference: String,
        source: ImageError,
    },
    /// The runtime's start (or what it needs: the process plan) failed.
    #[error(transparent)]
    Start(RuntimeError),
    /// Attaching it to its networks (addresses, ports) failed.
    #[error(transparent)]
    Attach(NetError),
    /// Stopping or removing the old container failed.
    #[error(transparent)]
    Teardown(RuntimeError),
    /// Detaching the removed container from its networks failed.
    #[error(transparent)]
    Detach(NetError),
    /// Marking a StartFirst update's new version as the one that serves failed.
    #[error(transparent)]
    Promote(RuntimeError),
    /// Moving the published ports and the name to the new version failed.
    #[error(transparent)]
    Handover(NetError),
}

impl Classify for StepError {
    fn class(&self) -> ErrorClass {
        match self {
            StepError::Image { source, .. } => source.class(),
            StepError::Start(e) | StepError::Teardown(e) | StepError::Promote(e) => e.class(),
            StepError::Attach(e) | StepError::Detach(e) | StepError::Handover(e) => e.class(),
        }
    }
}

/// The work of one step on one container.
pub(super) struct Task<R, I, N> {
    pub runtime: Arc<R>,
    pub images: Arc<I>,
    pub network: Arc<N>,
    pub memos: Memos,
    pub desired: Option<Sourced<Container>>,
    /// The desired container's effective hash (see `inputs::effective_hash`).
    pub hash: String,
    /// The instance that serves (see [`crate::runtime::instance`]).
    pub observed: Option<Observed>,
    /// The container's other instance, during a StartFirst update.
    pub other: Option<(Observed, Role)>,
}

/// How long the old version of a StartFirst update keeps running after the traffic
/// moved: connections it accepted just before still get their answers.
const DRAIN: Duration = Duration::from_secs(1);

impl<R: Runtime, I: Images, N: Network> Task<R, I, N> {
    pub async fn run(self, step: Step) {
        let name = step.name().to_owned();
        let update = matches!(
            step,
            Step::StartNext { .. } | Step::Promote { .. } | Step::Rollback { .. }
        );
        // Why a StartFirst update was given up on, when this step gives it up.
        let mut rolled_back = None;
        let result = match &step {
            Step::Remove { .. } => self.remove().await,
            // The new image first: a registry that is down (or a tag that is gone) never
            // takes the running version away.
            Step::Replace { .. } => match self.pull().await {
                Ok(image) => match self.teardown_current(true).await {
                    Ok(()) => self.create(&name, &name, true, false, Some(image)).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Step::Create { .. } => self.create(&name, &name, true, false, None).await,
            Step::Restart { .. } => {
                let instance = self
                    .observed
                    .as_ref()
                    .map_or(name.clone(), |o| o.name.clone());
                self.create(&name, &instance, false, false, None).await
            }
            Step::StartNext { .. } => match self.start_next(&name).await {
                // A spec that cannot run (an unknown user, an image for another
                // platform) is not retried: the old version runs on, under its policy.
                Err(e) if e.class() == ErrorClass::Permanent => {
                    rolled_back = Some(format!(
                        "the update is not applied, the running version keeps running: {e}. It is tried again when the manifest changes"
                    ));
                    self.roll_back().await
                }
                r => r,
            },
            Step::Promote { .. } => match self.promote().await {
                // The traffic cannot move (its ports are taken): nothing moved, the old
                // version serves on.
                Err(StepError::Handover(e))
                    if e.class() == ErrorClass::Permanent
                        && matches!(self.other, Some((_, Role::Candidate))) =>
                {
                    rolled_back = self.rollback_message(&format!("it cannot take over: {e}"));
                    self.roll_back().await
                }
                r => r,
            },
            Step::Rollback { reason, .. } => {
                rolled_back = self.rollback_reason(*reason);
                self.roll_back().await
            }
            // Networks and volumes have their own tasks.
            Step::EnsureNetwork { .. } | Step::RemoveNetwork { .. } | Step::Volume { .. } => Ok(()),
        };
        let policy = self
            .desired
            .as_ref()
            .map_or(RestartPolicy::Never, |c| c.object.spec.restart_policy);
        let rollout = self
            .desired
            .as_ref()
            .map(|c| super::inputs::rollout(&c.object))
            .unwrap_or_default();
        let mut memos = self.memos.lock().expect("memo lock");
        // The spec changed while this step ran: its outcome is about the old spec, and
        // must not mark the new one (an old permanent failure would fail it unseen).
        if self.desired.is_some() && memos.get(&name).is_some_and(|m| m.hash != self.hash) {
            return;
        }
        match result {
            Ok(()) if matches!(step, Step::Remove { .. }) => {
                memos.remove(&name);
            }
            Ok(()) => {
                let memo = memos.entry(name.clone()).or_default();
                memo.note_success(matches!(step, Step::Restart { .. }) || update);
                if let Some(why) = rolled_back {
                    tracing::warn!(container = %name, reason = %why, "update given up");
                    memo.rollback = Some((why, rollout));
                }
            }
            // A step of an update is retried with backoff whatever failed (the old
            // version serves meanwhile); giving up on the update is a rollback's job.
            Err(e) if update => {
                tracing::warn!(container = %name, error = %e, "update step failed");
                memos
                    .entry(name)
                    .or_default()
                    .note_retry(&e, Instant::now());
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "step failed");
                // The start itself: under `Never` that was the one try.
                let at_start = matches!(e, StepError::Start(_) | StepError::Attach(_));
                memos
                    .entry(name)
                    .or_default()
                    .note_failure(&e, at_start, policy, Instant::now());
            }
        }
    }

    /// Stops and removes every instance of the container: an update's other one first.
    async fn remove(&self) -> Result<(), StepError> {
        if let Some((other, _)) = &self.other {
            self.teardown(other, false).await?;
        }
        self.teardown_current(false).await
    }

    async fn teardown_current(&self, keep_log: bool) -> Result<(), StepError> {
        match &self.observed {
            Some(o) => self.teardown(o, keep_log).await,
            None => Ok(()),
        }
    }

    /// Stops one instance (its stop signal, its grace period, then SIGKILL), removes
    /// it (`keep_log`: its last output stays, for `--previous`) and detaches it.
    async fn teardown(&self, o: &Observed, keep_log: bool) -> Result<(), StepError> {
        let name = o.name.as_str();
        let meta = o.meta.as_ref();
        let signal = meta
            .and_then(|m| Signal::from_str(&m.stop_signal).ok())
            .unwrap_or(Signal::SIGTERM);
        // For a replace, the new spec's grace period (stopGracePeriod takes effect at
        // the next use, without a restart); else the one it was created with.
        let grace = self
            .desired
            .as_ref()
            .and_then(|c| c.object.spec.stop_grace_period)
            .or_else(|| meta?.spec.as_ref()?.spec.stop_grace_period)
            .unwrap_or(DEFAULT_STOP_GRACE);
        self.runtime
            .stop(name, signal, grace)
            .await
            .map_err(StepError::Teardown)?;
        let removed = if keep_log {
            self.runtime.remove_for_replace(name).await
        } else {
            self.runtime.remove(name).await
        };
        removed.map_err(StepError::Teardown)?;
        crate::fault::point("container-remove:runtime");
        // After the container: its addresses and ports are free only once it is gone.
        // A record without networks (host, none) has nothing attached.
        if meta.is_none_or(|m| !m.networks.is_empty()) {
            self.network.detach(name).await.map_err(StepError::Detach)?;
        }
        Ok(())
    }

    /// StartFirst: the new version in the other slot, beside the running one, standby.
    async fn start_next(&self, name: &str) -> Result<(), StepError> {
        let Some(current) = &self.observed else {
            return Err(StepError::Start(RuntimeError::StartFailed(
                "no running version to update".into(),
            )));
        };
        let image = self.pull().await?;
        let instance = crate::runtime::instance::alternate(&current.name);
        self.create(name, &instance, true, true, Some(image)).await
    }

    /// StartFirst: the new version is ready. In this order: (1) the ports and the name
    /// move to it (an agent killed now restarts with the old version still serving:
    /// it takes the traffic back, and the new one is judged again); (2) it is marked
    /// promoted (from now on a restarted agent finishes the update); (3) after a drain,
    /// the old one stops and goes.
    async fn promote(&self) -> Result<(), StepError> {
        let (Some(current), Some((other, role))) = (&self.observed, &self.other) else {
            return Ok(());
        };
        let (old, new) = match role {
            Role::Retired => (other, current),
            _ => (current, other),
        };
        let networked = new.meta.as_ref().filter(|m| !m.networks.is_empty());
        if let Some(meta) = networked {
            self.network
                .handover(&old.name, &new.name, &meta.ports)
                .await
                .map_err(StepError::Handover)?;
            tracing::info!(from = %old.name, to = %new.name, "traffic moved");
            crate::fault::point("update-handover:moved");
        }
        if !new.promoted {
            self.runtime
                .promote(&new.name)
                .await
                .map_err(StepError::Promote)?;
            crate::fault::point("update-promote:marked");
        }
        if networked.is_some() {
            tokio::time::sleep(DRAIN).await;
        }
        self.teardown(old, false).await
    }

    /// StartFirst: the new version goes; the old one serves on.
    async fn roll_back(&self) -> Result<(), StepError> {
        match &self.other {
            Some((candidate, Role::Candidate)) => self.teardown(candidate, false).await,
            _ => Ok(()),
        }
    }

    /// What the status says after a rollback for `reason`; `None` when the update was
    /// superseded (not a failure).
    fn rollback_reason(&self, reason: RollbackReason) -> Option<String> {
        let (candidate, _) = self.other.as_ref()?;
        let why = match reason {
            RollbackReason::Superseded => return None,
            RollbackReason::NotReady { timeout, health } => format!(
                "it was not {} within update.timeout {} ({})",
                if health.is_some() { "healthy" } else { "ready" },
                crate::units::format_duration(timeout),
                match health {
                    Some(h) => format!("it was {h}"),
                    None => "it did not run long enough".into(),
                },
            ),
            RollbackReason::Exited => match &candidate.state {
                ObservedState::Exited(e) => match &e.error {
                    Some(err) => format!("it failed to start: {err}"),
                    None => format!("it exited with code {} before it was ready", e.exit_code),
                },
                _ => "it was lost before it was ready".into(),
            },
        };
        self.rollback_message(&why)
    }

    /// `rolled back: generation N <why>; generation M keeps serving. …`
    fn rollback_message(&self, why: &str) -> Option<String> {
        let (candidate, _) = self.other.as_ref()?;
        let generation = |o: &Observed| o.meta.as_ref().map_or(0, |m| m.generation);
        let new = generation(candidate);
        let old = self.observed.as_ref().map_or(0, generation);
        let why = why.strip_prefix("it ").unwrap_or(why);
        Some(format!(
            "rolled back: generation {new} {why}; generation {old} keeps serving. The update is tried again when the manifest changes (or the agent restarts)"
        ))
    }

    /// The desired spec's image, pulled as its pull policy says.
    async fn pull(&self) -> Result<crate::reconciler::ImageInfo, StepError> {
        let Some(c) = &self.desired else {
            return Err(StepError::Start(RuntimeError::StartFailed(
                "no desired spec to pull for".into(),
            )));
        };
        let spec = &c.object.spec;
        self.images
            .ensure(&spec.image, spec.pull_policy)
            .await
            .map_err(|source| StepError::Image {
                reference: spec.image.clone(),
                source,
            })
    }

    /// Starts container `name` as runtime instance `instance`: a new container
    /// (`fresh`) or the next run of the same one; with `pulled`, the image a replace
    /// already pulled; `standby`: a StartFirst update's new version, attached without
    /// its ports and name.
    async fn create(
        &self,
        name: &str,
        instance: &str,
        fresh: bool,
        standby: bool,
        pulled: Option<crate::reconciler::ImageInfo>,
    ) -> Result<(), StepError> {
        let Some(desired) = &self.desired else {
            return Ok(());
        };
        // A restart restarts what runs: after a rolled back update that is the old
        // version, from its record, not the spec the manifest now asks for.
        let recorded = (!fresh)
            .then(|| self.observed.as_ref()?.meta.as_ref())
            .flatten()
            .filter(|m| m.hash != self.hash)
            .and_then(|m| {
                Some(Sourced {
                    object: m.spec.clone()?,
                    file: m.source.clone(),
                    line: 0,
                    column: 0,
                })
                .map(|c| (c, m.hash.clone()))
            });
        let (c, hash) = match &recorded {
            Some((c, hash)) => (c, hash.clone()),
            None => (desired, self.hash.clone()),
        };
        let spec = &c.object.spec;
        let image = match pulled {
            Some(image) => image,
            None if fresh => self.pull().await?,
            // A restart reuses the image it has; only a create honours `Always`.
            None => self
                .images
                .ensure(&spec.image, crate::manifest::PullPolicy::IfNotPresent)
                .await
                .map_err(|source| StepError::Image {
                    reference: spec.image.clone(),
                    source,
                })?,
        };
        let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_owned());
        let process = plan_process(
            &ProcessRequest {
                command: spec.command.clone(),
                args: spec.args.clone(),
                env: spec.env.clone(),
                working_dir: spec.working_dir.clone(),
                user: spec.user.clone(),
                hostname: hostname.clone(),
            },
            &image.defaults,
        )
        .map_err(StepError::Start)?;
        let stop_signal = spec
            .stop_signal
            .clone()
            .or_else(|| image.defaults.stop_signal.clone())
            .map(|s| normalize_signal(&s))
            .unwrap_or_else(|| "SIGTERM".into());
        let previous_generation = self
            .observed
            .as_ref()
            .and_then(|o| o.meta.as_ref())
            .map_or(0, |m| m.generation);
        let meta = ContainerMeta {
            spec: Some(c.object.clone()),
            hash,
            source: c.file.clone(),
            image: spec.image.clone(),
            image_digest: image.digest.clone(),
            stop_signal,
            // Filled in below, once it is attached.
            networks: Vec::new(),
            addresses: Vec::new(),
            ports: Vec::new(),
            volumes: c.object.volume_names().map(str::to_owned).collect(),
            generation: if fresh {
                previous_generation + 1
            } else {
                previous_generation.max(1)
            },
        };
        let host = spec.networks.as_deref() == Some(&["host".to_owned()]);
        let mut req = StartRequest {
            name: instance.to_owned(),
            hostname,
            process,
            layers: image.layers.clone(),
            read_only_rootfs: spec.read_only_root_filesystem,
            network: if host {
                NetworkMode::Host
            } else {
                NetworkMode::Private
            },
            etc_files: Vec::new(),
            // Privileged: every capability but those `capabilities.drop` names.
            capabilities: if spec.privileged {
                let drop = spec
                    .capabilities
                    .as_ref()
                    .map(|c| c.drop.clone())
                    .unwrap_or_default();
                resolve_capabilities(&["ALL".to_owned()], &drop)
            } else {
                spec.capabilities
                    .as_ref()
                    .map(|c| resolve_capabilities(&c.add, &c.drop))
                    .unwrap_or_else(|| resolve_capabilities(&[], &[]))
            },
            privileged: spec.privileged,
            limits: spec
                .resources
                .as_ref()
                .map(|r| crate::runtime::Limits {
                    memory: r.memory,
                    cpus: r.cpus,
                    pids: r.pids,
                })
                .unwrap_or_default(),
            mounts: spec.mounts.clone(),
            meta,
            fresh,
        };
        let bridges = super::inputs::bridge_networks(&c.object);
        let attach = !bridges.is_empty();
        if attach {
            let attached = self
                .network
                .attach(&AttachSpec {
                    container: instance.to_owned(),
                    hostname: req.hostname.clone(),
                    networks: bridges.clone(),
                    ports: spec.ports.iter().map(PortMapping::from).collect(),
                    standby,
                })
                .await
                .map_err(StepError::Attach)?;
            req.network = NetworkMode::Join(attached.netns);
            req.etc_files = attached.etc_files;
            req.meta.networks = bridges;
            req.meta.addresses = attached.addresses;
            // What it publishes once it serves (a standby one's are not yet).
            req.meta.ports = attached.ports;
        }
        match self.runtime.start(req).await {
            Ok(r) => {
                tracing::info!(container = %name, %instance, pid = r.pid, "started");
                if attach {
                    self.network.started(instance).await;
                }
                Ok(())
            }
            Err(e) => {
                // Undone; a restart attaches again, to the same address.
                if attach {
                    if let Err(d) = self.network.detach(instance).await {
                        tracing::warn!(container = %name, %instance, error = %d, "detach after a failed start");
                    }
                }
                Err(StepError::Start(e))
            }
        }
    }
}

/// The work of one step on one network.
pub(super) struct NetworkTask<N> {
    pub network: Arc<N>,
    pub memos: Memos,
    /// The resolved config to ensure (none for a removal).
    pub config: Option<NetworkConfig>,
}

impl<N: Network> NetworkTask<N> {
    pub async fn run(self, step: Step) {
        let name = step.name().to_owned();
        let result = match (&step, &self.config) {
            (Step::EnsureNetwork { .. }, Some(config)) => self.network.ensure(config).await,
            (Step::RemoveNetwork { .. }, _) => self.network.remove(&name).await,
            _ => Ok(()),
        };
        let hash = self
            .config
            .as_ref()
            .map(super::apply::config_hash)
            .unwrap_or_default();
        let removed = matches!(step, Step::RemoveNetwork { .. });
        note_outcome(&self.memos, "network", name, hash, removed, result);
    }
}

/// Puts the outcome of a step on a network or volume into its memo: a success clears
/// it (a removal forgets it), a failure backs off (none of theirs is a start).
fn note_outcome<E: Classify + std::fmt::Display>(
    memos: &Memos,
    kind: &str,
    name: String,
    hash: String,
    removed: bool,
    result: Result<(), E>,
) {
    let mut memos = memos.lock().expect("memo lock");
    // What the step was about changed while it ran: its outcome is not the new one's.
    if memos.get(&name).is_some_and(|m| m.hash != hash) {
        return;
    }
    match result {
        Ok(()) if removed => {
            memos.remove(&name);
        }
        Ok(()) => {
            if let Some(m) = memos.get_mut(&name) {
                m.note_success(false);
            }
        }
        Err(e) => {
            tracing::warn!(%kind, %name, error = %e, "step failed");
            let memo = memos.entry(name).or_insert_with(|| Memo {
                hash,
                ..Default::default()
            });
            memo.note_failure(&e, false, RestartPolicy::Always, Instant::now());
        }
    }
}

/// The work of one step on one volume.
pub(super) struct VolumeTask<V> {
    pub volumes: Arc<V>,
    pub memos: Memos,
    pub action: Action,
    /// What its memo is about (see `Reconciler::volume_inputs`).
    pub hash: String,
}

impl<V: Volumes> VolumeTask<V> {
    pub async fn run(self) {
        let name = match &self.action {
            Action::Create { name, .. } | Action::Update { name, .. } | Action::Delete { name } => {
                name.clone()
            }
        };
        let deleted = matches!(self.action, Action::Delete { .. });
        let result = self.volumes.apply(self.action).await;
        note_outcome(&self.memos, "volume", name, self.hash, deleted, result);
    }
}

/// `TERM`, `SIGTERM` or `15` → `SIGTERM`.
fn normalize_signal(s: &str) -> String {
    if let Ok(n) = s.parse::<i32>() {
        if let Ok(sig) = Signal::try_from(n) {
            return sig.as_str().to_owned();
        }
    }
    let upper = s.to_ascii_uppercase();
    if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_normalised_to_their_sig_name() {
        assert_eq!(normalize_signal("TERM"), "SIGTERM");
        assert_eq!(normalize_signal("sigquit"), "SIGQUIT");
        assert_eq!(normalize_signal("9"), "SIGKILL");
    }
}
