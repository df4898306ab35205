//! Apply: runs the planner's steps through the `Runtime` and `Images` traits, one task
//! per container, and builds the status snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::plan::{self, Inputs, Step};
use super::report::container_status;
use super::status::{ManifestError, ManifestReport, StatusSnapshot};
use super::task::{Memos, Task};
use super::Images;
use crate::manifest::DesiredState;
use crate::runtime::{Observed, ObservedState, Runtime, RuntimeError};

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
                *memo = super::memo::Memo {
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
        }
        inputs
    }

    fn status(
        &self,
        desired: &DesiredState,
        observed: &BTreeMap<String, Observed>,
    ) -> StatusSnapshot {
        let memos = self.memos.lock().expect("memo lock").clone();
        let now = Instant::now();
        let mut containers = Vec::new();
        for (name, c) in &desired.containers {
            let memo = memos.get(name).cloned().unwrap_or_default();
            let mut s = container_status(
                name,
                Some(c),
                observed.get(name),
                &memo,
                self.inflight.get(name),
                now,
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
            let mut s = container_status(name, None, Some(o), &memo, self.inflight.get(name), now);
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
