//! The work of one step on one container: pull, start, stop, remove, through the
//! `Runtime` and `Images` seams. Its outcome goes to the container's memo.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::signal::Signal;

use super::memo::Memo;
use super::plan::Step;
use super::Images;
use crate::class::{Classify, ErrorClass};
use crate::images::ImageError;
use crate::manifest::{Container, RestartPolicy, Sourced};
use crate::net::driver::{NetError, NetworkConfig, PortMapping};
use crate::net::{AttachSpec, Network};
use crate::runtime::process::{plan_process, resolve_capabilities, ProcessRequest};
use crate::runtime::{ContainerMeta, NetworkMode, Observed, Runtime, RuntimeError, StartRequest};
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
}

impl Classify for StepError {
    fn class(&self) -> ErrorClass {
        match self {
            StepError::Image { source, .. } => source.class(),
            StepError::Start(e) | StepError::Teardown(e) => e.class(),
            StepError::Attach(e) | StepError::Detach(e) => e.class(),
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
    pub observed: Option<Observed>,
}

impl<R: Runtime, I: Images, N: Network> Task<R, I, N> {
    pub async fn run(self, step: Step) {
        let name = step.name().to_owned();
        let result = match &step {
            Step::Remove { .. } => self.remove(&name).await,
            // The new image first: a registry that is down (or a tag that is gone) never
            // takes the running version away.
            Step::Replace { .. } => match self.pull().await {
                Ok(image) => match self.remove(&name).await {
                    Ok(()) => self.create(&name, true, Some(image)).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Step::Create { .. } => self.create(&name, true, None).await,
            Step::Restart { .. } => self.create(&name, false, None).await,
            // Networks and volumes have their own tasks.
            Step::EnsureNetwork { .. } | Step::RemoveNetwork { .. } | Step::Volume { .. } => Ok(()),
        };
        let policy = self
            .desired
            .as_ref()
            .map_or(RestartPolicy::Never, |c| c.object.spec.restart_policy);
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
            Ok(()) => memos
                .entry(name)
                .or_default()
                .note_success(matches!(step, Step::Restart { .. })),
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

    /// Stops (its stop signal, its grace period, then SIGKILL) and removes.
    async fn remove(&self, name: &str) -> Result<(), StepError> {
        let Some(o) = &self.observed else {
            return Ok(());
        };
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
        // Replaced (or taken down to be): its last output stays, for `--previous`.
        let removed = if self.desired.is_some() {
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

    /// Starts the desired spec: a new container (`fresh`) or the next run of the same
    /// one; with `pulled`, the image a replace already pulled.
    async fn create(
        &self,
        name: &str,
        fresh: bool,
        pulled: Option<crate::reconciler::ImageInfo>,
    ) -> Result<(), StepError> {
        let Some(c) = &self.desired else {
            return Ok(());
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
            hash: self.hash.clone(),
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
            name: name.to_owned(),
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
                    container: name.to_owned(),
                    hostname: req.hostname.clone(),
                    networks: bridges.clone(),
                    ports: spec.ports.iter().map(PortMapping::from).collect(),
                })
                .await
                .map_err(StepError::Attach)?;
            req.network = NetworkMode::Join(attached.netns);
            req.etc_files = attached.etc_files;
            req.meta.networks = bridges;
            req.meta.addresses = attached.addresses;
            req.meta.ports = attached.ports;
        }
        match self.runtime.start(req).await {
            Ok(r) => {
                tracing::info!(container = %name, pid = r.pid, "started");
                if attach {
                    self.network.started(name).await;
                }
                Ok(())
            }
            Err(e) => {
                // Undone; a restart attaches again, to the same address.
                if attach {
                    if let Err(d) = self.network.detach(name).await {
                        tracing::warn!(container = %name, error = %d, "detach after a failed start");
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
