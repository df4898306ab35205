//! Apply: runs the planner's steps through the `Runtime` and `Images` traits, one task
//! per container, and builds the status snapshot.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::plan::{self, Inputs, Step};
use super::status::{
    ContainerState, ContainerStatus, ManifestError, ManifestReport, StatusSnapshot,
};
use super::{backoff, keys, Images};
use crate::manifest::{Container, DesiredState, RestartPolicy, Sourced};
use crate::runtime::process::{plan_process, ProcessRequest};
use crate::runtime::records::rfc3339;
use crate::runtime::{Observed, ObservedState, Runtime, RuntimeError, StartRequest};

/// Default grace period between the stop signal and SIGKILL (Docker's is 10 s).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What the reconciler remembers about a container between passes.
#[derive(Debug, Default, Clone)]
struct Memo {
    /// The desired spec hash this memo is about; a new hash starts a fresh memo, so an
    /// edit is applied at once, without waiting out an old backoff.
    hash: String,
    message: Option<String>,
    /// The last attempt failed in a way the user must fix (state `failed`), rather than
    /// a wait (state `pending`).
    failed: bool,
    /// The last attempt failed in a way no retry can fix (see `Failure::retry`).
    unrunnable: bool,
    /// Consecutive failures or quick exits, for the backoff.
    failures: u32,
    not_before: Option<Instant>,
    /// The run whose exit was already accounted for.
    seen_exit_run: Option<u64>,
}

type Memos = Arc<Mutex<HashMap<String, Memo>>>;

/// Converges containers; generic over the runtime and the image store so tests use
/// small fakes and production the real ones.
pub struct Reconciler<R: Runtime, I: Images> {
    runtime: Arc<R>,
    images: Arc<I>,
    memos: Memos,
    inflight: HashMap<String, Step>,
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl<R: Runtime, I: Images> Reconciler<R, I> {
    pub fn new(runtime: Arc<R>, images: Arc<I>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Reconciler {
            runtime,
            images,
            memos: Arc::default(),
            inflight: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Waits until a step finishes; returns its container's name.
    pub async fn step_done(&mut self) -> Option<String> {
        let name = self.done_rx.recv().await?;
        self.inflight.remove(&name);
        Some(name)
    }

    /// Whether any step is still running.
    pub fn busy(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// One level-triggered pass: observe, plan, start the steps not already running,
    /// and return the status plus when to look again for steps held by backoff.
    pub async fn pass(
        &mut self,
        desired: &DesiredState,
    ) -> Result<(StatusSnapshot, Option<Instant>), RuntimeError> {
        let observed: BTreeMap<String, Observed> = self
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
        let now = Instant::now();
        let inputs = self.inputs(desired, &observed, now);
        let plan = plan::plan(&inputs, now);
        for mut step in plan.steps {
            let name = step.name().to_owned();
            super::inputs::explain(&mut step, desired, &observed);
            if self.inflight.contains_key(&name) {
                continue;
            }
            tracing::info!(container = %name, ?step, "apply");
            self.inflight.insert(name.clone(), step.clone());
            let task = Task {
                runtime: self.runtime.clone(),
                images: self.images.clone(),
                memos: self.memos.clone(),
                desired: desired.containers.get(&name).cloned(),
                hash: desired
                    .containers
                    .get(&name)
                    .map(|c| super::inputs::effective_hash(&c.object, desired))
                    .unwrap_or_default(),
                observed: observed.get(&name).cloned(),
            };
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                task.run(step).await;
                let _ = done.send(name);
            });
        }
        Ok((self.status(desired, &observed), plan.wake_at))
    }

    fn inputs(
        &self,
        desired: &DesiredState,
        observed: &BTreeMap<String, Observed>,
        now: Instant,
    ) -> Inputs {
        let mut inputs = super::inputs::inputs(desired, observed);
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
                    let restart = exit.error.is_some()
                        || plan::should_restart(want.restart_policy, exit.exit_code);
                    if restart && memo.seen_exit_run != Some(exit.run) {
                        memo.seen_exit_run = Some(exit.run);
                        let ran = exit.finished_at - o.started_at.unwrap_or(exit.finished_at);
                        if exit.error.is_none() && ran >= backoff::RESET_AFTER.as_secs() as i64 {
                            memo.failures = 0;
                        } else {
                            memo.failures += 1;
                        }
                        memo.not_before =
                            Some(now + backoff::delay(memo.failures.saturating_sub(1)));
                    }
                }
            }
            if let Some(t) = memo.not_before {
                inputs.not_before.insert(name.clone(), t);
            }
            if memo.unrunnable {
                inputs.failed.insert(name.clone());
            }
        }
        inputs
    }

    fn status(
        &self,
        desired: &DesiredState,
        observed: &BTreeMap<String, Observed>,
    ) -> StatusSnapshot {
        let memos = self.memos.lock().expect("memo lock").clone();
        let mut containers = Vec::new();
        for (name, c) in &desired.containers {
            let memo = memos.get(name).cloned().unwrap_or_default();
            let mut s = container_status(
                name,
                Some(c),
                observed.get(name),
                &memo,
                self.inflight.get(name),
            );
            s.spec_hash = Some(super::inputs::effective_hash(&c.object, desired));
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
            let mut s = container_status(name, None, Some(o), &memo, self.inflight.get(name));
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
        }
    }
}

fn unsupported_message(fields: &[&str]) -> String {
    format!(
        "not supported yet: {} (parsed and validated, but this release cannot apply them; remove them to run the container)",
        fields.iter().map(|f| format!("spec.{f}")).collect::<Vec<_>>().join(", ")
    )
}

fn container_status(
    name: &str,
    desired: Option<&Sourced<Container>>,
    observed: Option<&Observed>,
    memo: &Memo,
    inflight: Option<&Step>,
) -> ContainerStatus {
    let unsupported = desired
        .map(|c| c.object.unsupported_fields())
        .unwrap_or_default();
    let mut status = ContainerStatus {
        name: name.to_owned(),
        state: ContainerState::Pending,
        pid: None,
        image: desired
            .map(|c| c.object.spec.image.clone())
            .or_else(|| observed.and_then(|o| o.annotations.get(keys::IMAGE).cloned()))
            .unwrap_or_default(),
        image_digest: observed.and_then(|o| o.annotations.get(keys::IMAGE_DIGEST).cloned()),
        restart_count: observed.map(|o| o.restart_count).unwrap_or(0),
        exit_code: None,
        started_at: observed.and_then(|o| o.started_at).map(rfc3339),
        finished_at: None,
        source: desired
            .map(|c| c.file.clone())
            .or_else(|| observed.and_then(|o| o.annotations.get(keys::SOURCE).cloned())),
        spec_hash: desired
            .map(|c| c.object.spec_hash())
            .or_else(|| observed.and_then(|o| o.annotations.get(keys::SPEC_HASH).cloned())),
        message: memo.message.clone(),
        addresses: observed
            .and_then(|o| o.annotations.get(crate::net::runtime::ADDRESSES))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default(),
        log_path: observed.map(|o| o.log_path.clone()),
        usage: observed.and_then(|o| o.usage),
        volumes: {
            // What it mounts now and what its next version will mount: both are in use.
            let mut v: Vec<String> = desired
                .map(|c| c.object.volume_names().map(str::to_owned).collect())
                .unwrap_or_default();
            if let Some(names) = observed.and_then(|o| o.annotations.get(keys::VOLUMES)) {
                v.extend(
                    names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                );
            }
            v.sort();
            v.dedup();
            v
        },
    };
    let policy = desired
        .map(|c| c.object.spec.restart_policy)
        .unwrap_or(RestartPolicy::Never);
    match observed.map(|o| &o.state) {
        None if memo.failed => status.state = ContainerState::Failed,
        None if !unsupported.is_empty() => {
            status.state = ContainerState::Failed;
            status.message = Some(unsupported_message(&unsupported));
        }
        None | Some(ObservedState::Lost) => status.state = ContainerState::Pending,
        Some(ObservedState::Running(r)) => {
            status.state = ContainerState::Running;
            status.pid = Some(r.pid);
            if !unsupported.is_empty() {
                status.message = Some(format!(
                    "the changed spec is not applied, the previous one keeps running: {}",
                    unsupported_message(&unsupported)
                ));
            }
        }
        Some(ObservedState::Exited(e)) => {
            status.exit_code = e.error.is_none().then_some(e.exit_code);
            if e.oom_killed && status.message.is_none() {
                status.message = Some(
                    "OOMKilled: the container exceeded its memory limit (spec.resources.memory)"
                        .into(),
                );
            }
            if let (Some(m), None) = (&e.message, &status.message) {
                status.message = Some(m.clone());
            }
            status.finished_at = Some(rfc3339(e.finished_at));
            status.state = if let Some(err) = &e.error {
                status.message = Some(err.clone());
                ContainerState::Failed
            } else if desired.is_some() && plan::should_restart(policy, e.exit_code) {
                ContainerState::Pending
            } else {
                ContainerState::Exited
            };
            if e.error.is_none() && memo.failed {
                status.state = ContainerState::Failed;
            }
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
                Step::Remove { .. } => "removing: no manifest declares it".into(),
            });
        }
    }
    status
}

/// The work of one step on one container.
struct Task<R, I> {
    runtime: Arc<R>,
    images: Arc<I>,
    memos: Memos,
    desired: Option<Sourced<Container>>,
    /// The desired container's effective hash (see `inputs::effective_hash`).
    hash: String,
    observed: Option<Observed>,
}

impl<R: Runtime, I: Images> Task<R, I> {
    async fn run(self, step: Step) {
        let name = step.name().to_owned();
        let result = match &step {
            Step::Remove { .. } => self.remove(&name).await,
            Step::Replace { .. } => match self.remove(&name).await {
                Ok(()) => self.create(&name, true).await,
                Err(e) => Err(e),
            },
            Step::Create { .. } => self.create(&name, true).await,
            Step::Restart { .. } => self.create(&name, false).await,
        };
        let mut memos = self.memos.lock().expect("memo lock");
        let memo = memos.entry(name.clone()).or_default();
        match result {
            Ok(()) => {
                memo.message = None;
                memo.failed = false;
                memo.unrunnable = false;
                if !matches!(step, Step::Restart { .. }) {
                    memo.failures = 0;
                }
                memo.not_before = None;
                if matches!(step, Step::Remove { .. }) {
                    memos.remove(&name);
                }
            }
            Err(Failure {
                message,
                failed,
                retry,
            }) => {
                tracing::warn!(container = %name, %message, "step failed");
                memo.message = Some(message);
                memo.failed = failed;
                memo.unrunnable = !retry;
                memo.failures += 1;
                memo.not_before = Some(Instant::now() + backoff::delay(memo.failures - 1));
            }
        }
    }

    /// Stops (its stop signal, its grace period, then SIGKILL) and removes.
    async fn remove(&self, name: &str) -> Result<(), Failure> {
        let Some(o) = &self.observed else {
            return Ok(());
        };
        let signal = o
            .annotations
            .get(keys::STOP_SIGNAL)
            .and_then(|s| Signal::from_str(s).ok())
            .unwrap_or(Signal::SIGTERM);
        // The grace period of the spec the container was created from; for a replace,
        // the new spec's (stopGracePeriod takes effect at the next use without restart).
        let grace = self
            .desired
            .as_ref()
            .and_then(|c| c.object.spec.stop_grace_period)
            .or_else(|| {
                o.annotations
                    .get(keys::CONTAINER)
                    .and_then(|j| serde_json::from_str::<Container>(j).ok())
                    .and_then(|c| c.spec.stop_grace_period)
            })
            .unwrap_or(DEFAULT_STOP_GRACE);
        self.runtime
            .stop(name, signal, grace)
            .await
            .map_err(Failure::pending)?;
        self.runtime.remove(name).await.map_err(Failure::pending)
    }

    async fn create(&self, name: &str, fresh: bool) -> Result<(), Failure> {
        let Some(c) = &self.desired else {
            return Ok(());
        };
        let spec = &c.object.spec;
        // A restart reuses the image it has; only a create honours `Always`.
        let policy = if fresh {
            spec.pull_policy
        } else {
            crate::manifest::PullPolicy::IfNotPresent
        };
        let image = self
            .images
            .ensure(&spec.image, policy)
            .await
            .map_err(|e| Failure::pending(format!("image {}: {e}", spec.image)))?;
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
        .map_err(Failure::failed)?;
        let stop_signal = spec
            .stop_signal
            .clone()
            .or_else(|| image.defaults.stop_signal.clone())
            .map(|s| normalize_signal(&s))
            .unwrap_or_else(|| "SIGTERM".into());
        let annotations = HashMap::from([
            (keys::SPEC_HASH.to_owned(), self.hash.clone()),
            (
                keys::CONTAINER.to_owned(),
                serde_json::to_string(&c.object).unwrap_or_default(),
            ),
            (keys::SOURCE.to_owned(), c.file.clone()),
            (keys::IMAGE.to_owned(), spec.image.clone()),
            (keys::IMAGE_DIGEST.to_owned(), image.digest.clone()),
            (keys::STOP_SIGNAL.to_owned(), stop_signal),
            (
                keys::VOLUMES.to_owned(),
                c.object.volume_names().collect::<Vec<_>>().join(","),
            ),
        ]);
        let networks: Vec<String> = spec
            .networks
            .clone()
            .unwrap_or_else(|| vec!["default".to_owned()]);
        let req = StartRequest {
            name: name.to_owned(),
            hostname,
            process,
            layers: image.layers.clone(),
            read_only_rootfs: spec.read_only_root_filesystem,
            network: if networks == ["host"] {
                crate::runtime::NetworkMode::Host
            } else {
                crate::runtime::NetworkMode::Private
            },
            etc_files: Vec::new(),
            // `none` and `host` are namespaces, not networks to attach to.
            networks: if networks == ["host"] || networks == ["none"] {
                Vec::new()
            } else {
                networks.clone()
            },
            ports: spec.ports.clone(),
            // Privileged: every capability but those `capabilities.drop` names.
            capabilities: if spec.privileged {
                let drop = spec
                    .capabilities
                    .as_ref()
                    .map(|c| c.drop.clone())
                    .unwrap_or_default();
                crate::runtime::process::resolve_capabilities(&["ALL".to_owned()], &drop)
            } else {
                spec.capabilities
                    .as_ref()
                    .map(|c| crate::runtime::process::resolve_capabilities(&c.add, &c.drop))
                    .unwrap_or_else(|| crate::runtime::process::resolve_capabilities(&[], &[]))
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
            annotations,
            fresh,
        };
        match self.runtime.start(req).await {
            Ok(r) => {
                tracing::info!(container = %name, pid = r.pid, "started");
                Ok(())
            }
            Err(RuntimeError::StartFailed(m)) => Err(Failure::failed(m)),
            Err(RuntimeError::Unrunnable(m)) => Err(Failure {
                message: m,
                failed: true,
                retry: false,
            }),
            Err(e) => Err(Failure::failed(e.to_string())),
        }
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

/// A failed step: the message for the status, and whether the user must act (`failed`)
/// or the agent will get there by retrying (`pending`).
struct Failure {
    message: String,
    failed: bool,
    /// False when only an edit of the spec can help (`RuntimeError::Unrunnable`): not
    /// retried under `Never`.
    retry: bool,
}

impl Failure {
    fn pending(e: impl ToString) -> Self {
        Failure {
            message: e.to_string(),
            failed: false,
            retry: true,
        }
    }
    fn failed(e: impl ToString) -> Self {
        Failure {
            message: e.to_string(),
            failed: true,
            retry: true,
        }
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
