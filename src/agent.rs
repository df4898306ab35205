//! The agent: wires the manifest source, the reconciler, the runtime, the image store
//! and the read-only endpoint together, and runs the reconcile loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::api;
use crate::cli::AgentArgs;
use crate::images::{self, ImageStore, RegistryConfig};
use crate::manifest::{self, Loader, PullPolicy};
use crate::net::{driver::Networks, BridgeNetwork};
use crate::reconciler::status::{ImageStatus, StatusSnapshot};
use crate::reconciler::{ImageInfo, Images, Reconciler, Seams};
use crate::runtime::LinuxRuntime;
use crate::volumes::{Declared, VolumeStore};

/// How often the runtime is relisted without any event: only a safety net. Exits are
/// noticed at once through a pidfd on each shim (`runtime::shim_watch`), manifest
/// changes through the watcher, finished steps and backoff deadlines wake the loop
/// themselves. (kubelet's PLEG relists every second because it has nothing better.)
pub const RELIST: Duration = Duration::from_secs(10);

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Unsupported(String),
    #[error("create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agent is using the state root {path} (lock {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(transparent)]
    Images(#[from] images::ImageError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Net(#[from] crate::net::driver::NetError),
}

/// A short id derived from the state root: it tags this agent's kernel objects (cgroup
/// paths, later links and nftables tables), so several agents can share one host.
pub fn instance_id(state_root: &Path) -> String {
    let canonical = state_root
        .canonicalize()
        .unwrap_or_else(|_| state_root.to_owned());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..4])
}

/// The image store behind the reconciler's narrow `Images` trait.
pub struct StoreImages(pub ImageStore);

impl Images for StoreImages {
    async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<ImageInfo, images::ImageError> {
        let policy = match policy {
            PullPolicy::IfNotPresent => images::PullPolicy::IfNotPresent,
            PullPolicy::Always => images::PullPolicy::Always,
            PullPolicy::Never => images::PullPolicy::Never,
        };
        let image = self.0.ensure(reference, policy).await?;
        // Counts as a use for garbage collection: the container is created next.
        self.0.mark_used(&image.digest);
        Ok(ImageInfo {
            digest: image.digest,
            defaults: image.config,
            layers: image.layers,
        })
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The volume task's list with the reconciler's reasons beside each volume, and each
/// declared volume not made yet as `pending` (with why, once a try failed): a volume
/// whose creation fails is in the list, saying so, not missing from it.
fn with_messages(
    mut volumes: Vec<crate::reconciler::status::VolumeStatus>,
    messages: &std::collections::BTreeMap<String, String>,
    declared: &Declared,
) -> Vec<crate::reconciler::status::VolumeStatus> {
    for v in &mut volumes {
        v.message = messages.get(&v.name).cloned();
    }
    let made: std::collections::BTreeSet<String> = volumes.iter().map(|v| v.name.clone()).collect();
    for (name, policy) in &declared.volumes {
        if made.contains(name) || declared.frozen.contains(name) {
            continue;
        }
        volumes.push(crate::reconciler::status::VolumeStatus {
            name: name.clone(),
            path: String::new(),
            size: 0,
            reclaim_policy: *policy,
            declared: true,
            source: declared.sources.get(name).cloned(),
            state: "pending".into(),
            populated: false,
            created_at: None,
            used_by: Vec::new(),
            message: messages.get(name).cloned(),
        });
    }
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    volumes
}

/// Each running container's health and last probe results, from the monitor.
fn with_health(status: &mut StatusSnapshot, health: &crate::health::Monitor) {
    for c in &mut status.containers {
        let found = c
            .health_target
            .as_ref()
            .and_then(|t| health.get(&t.name, t.pid));
        (c.health, c.probes) = match found {
            Some((h, probes)) => (Some(h), probes),
            None => (None, Vec::new()),
        };
    }
}

/// The containers with new probe results (from [`crate::health::Monitor::take_changed`]).
fn with_new_results(
    status: &mut StatusSnapshot,
    changed: Vec<(
        String,
        i32,
        crate::health::Health,
        Vec<crate::health::ProbeResult>,
    )>,
) {
    // By instance (the monitor's key), not container name.
    for (instance, pid, health, probes) in changed {
        if let Some(c) = status.containers.iter_mut().find(|c| {
            c.health_target
                .as_ref()
                .is_some_and(|t| t.name == instance && t.pid == pid)
        }) {
            c.health = Some(health);
            c.probes = probes;
        }
    }
}

/// Publishes the latest snapshot with one part replaced, for readers (the endpoint)
/// only: waiters are not woken, since the tasks that produce those parts wait on the
/// snapshot themselves (a volume list republished would wake the volume task, whose new
/// list would be republished, and so on, a busy loop).
fn republish(
    status: &watch::Sender<Arc<StatusSnapshot>>,
    change: impl FnOnce(&mut StatusSnapshot),
) {
    status.send_if_modified(|s| {
        change(Arc::make_mut(s));
        false
    });
}

/// Raises the soft limit on open files to the hard one, as dockerd and containerd do:
/// the agent holds a descriptor per watched folder, container record, netlink socket
/// and client, and the usual soft 1,024 is soon reached on a busy host. (The endpoint
/// also caps its connections well below it; see `api::server`.)
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            crate::runtime::set_inherited_nofile(soft);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Runs the agent until SIGTERM or SIGINT. Containers keep running after it returns.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    if args.git_repo.is_some() {
        return Err(AgentError::Unsupported(
            "--git-repo: syncing manifests from git is not supported yet; use --manifests DIR"
                .into(),
        ));
    }
    raise_open_files_limit();
    for dir in [&args.state, &args.run_dir] {
        // Root only: container layers and volumes hold whatever a container's root put
        // there, set-id binaries and device nodes included (Docker's CVE-2021-41091).
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|source| AgentError::CreateDir {
                path: dir.clone(),
                source,
            })?;
    }
    let _lock = lock_state(&args.state)?;
    let instance = instance_id(&args.state);
    let shim_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let (health, mut unhealthy) = crate::health::Monitor::new(crate::health::probe::ExecVia::new(
        shim_exe.clone(),
        args.state.clone(),
        args.run_dir.clone(),
    ));
    let linux = LinuxRuntime::new(&args.state, &args.run_dir, &instance, shim_exe);
    // An unhealthy container under `Always` is stopped; its policy restarts it.
    let stopper = linux.clone();
    let unhealthy_task = tokio::spawn(async move {
        while let Some(u) = unhealthy.recv().await {
            let rt = stopper.clone();
            tokio::spawn(async move {
                if let Err(e) = rt
                    .stop_because(&u.name, (u.pid, u.start_time), u.reason)
                    .await
                {
                    tracing::warn!(container = %u.name, error = %e, "stop an unhealthy container");
                }
            });
        }
    });
    let nets = Networks::new(&instance, &args.state, &args.run_dir)?;
    let network = Arc::new(BridgeNetwork::new(nets, &args.state));
    // A deleted veth or bridge, a flushed ruleset: repaired as soon as the kernel says.
    let drift = crate::net::monitor::Drift::watch(
        &crate::net::link::link_prefix(&instance),
        &crate::net::firewall::table_name(&instance),
    );
    let drift_task = tokio::spawn(crate::net::monitor::repair_on_drift(drift, network.clone()));
    let store = ImageStore::open_with(
        &args.state.join("images"),
        RegistryConfig {
            insecure: args.insecure_registries.clone(),
            mirrors: args.registry_mirrors.clone(),
            max_layer_bytes: Some(args.max_layer_size),
            ..Default::default()
        },
    )?;
    let mut reconciler = Reconciler::new(Seams {
        runtime: Arc::new(linux.clone()),
        images: Arc::new(StoreImages(store.clone())),
        network,
        volumes: Arc::new(VolumeStore::new(&args.state)),
    });
    let mut loader = Loader::new(Some(args.state.join("manifests-last-good.json")));
    let policy = manifest::ScanPolicy {
        external_links: args.allow_external_symlinks,
    };
    let (watcher, mut files) = manifest::watch_dir(args.manifests.clone(), args.resync, policy)?;
    tracing::info!(
        manifests = %args.manifests.display(),
        state = %args.state.display(),
        instance = %instance,
        listen = %args.listen,
        "agent starting"
    );

    let (status_tx, status_rx) = watch::channel(Arc::new(StatusSnapshot::default()));
    let (images_tx, mut images_rx) = watch::channel(Vec::new());
    let housekeeping = tokio::spawn(image_housekeeping(
        store,
        status_rx.clone(),
        images_tx,
        args.image_gc_grace,
    ));
    let (declared_volumes_tx, declared_volumes_rx) = watch::channel(Declared::default());
    let (volumes_tx, mut volumes_rx) = watch::channel(Vec::new());
    let volume_task = tokio::spawn(crate::volumes::housekeeping::run(
        VolumeStore::new(&args.state),
        status_rx.clone(),
        declared_volumes_rx,
        volumes_tx,
    ));
    let heartbeat = Arc::new(AtomicI64::new(now_millis()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_state = api::ApiState {
        status: status_rx,
        heartbeats: vec![
            api::Heartbeat {
                what: "the reconcile loop",
                last: heartbeat.clone(),
                max_silence: RELIST * 3 + Duration::from_secs(20),
            },
            api::Heartbeat {
                what: "the manifest watcher",
                last: watcher.heartbeat(),
                max_silence: watcher.max_silence(),
            },
        ],
    };
    // Bind before anything else runs: an address in use or a bad socket path is an
    // error at start, not a silent endpoint-less agent.
    let listener = api::bind(&args.listen).await?;
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(async move {
        api::serve_on(listener, api_state, async move {
            let _ = api_stop.wait_for(|s| *s).await;
        })
        .await
    });

    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut desired = loader.load(&files.borrow_and_update());
    declared_volumes_tx.send_replace(crate::reconciler::inputs::declared_volumes(&desired));
    // Networks first (netns-first for containers), then re-adopt what runs: same
    // addresses, published ports restored, leftovers of vanished containers removed.
    if let Err(e) = reconciler.adopt(&desired).await {
        tracing::warn!(error = %e, "list containers for network adoption");
    }
    let mut last_repair = Instant::now();
    let mut first_pass = true;
    'passes: loop {
        reconciler.set_health(health.states());
        match reconciler.pass(&desired).await {
            Ok((status, wake)) => {
                if first_pass {
                    // Cgroups left by a crash between creating a cgroup and its record.
                    let known: Vec<String> = reconciler.known_instances();
                    let rt = linux.clone();
                    let removed =
                        tokio::task::spawn_blocking(move || rt.remove_orphan_cgroups(&known))
                            .await
                            .unwrap_or_default();
                    if !removed.is_empty() {
                        tracing::info!(?removed, "removed orphan cgroups");
                    }
                    first_pass = false;
                }
                let mut status = status;
                let targets: Vec<_> = status
                    .containers
                    .iter()
                    .filter_map(|c| c.health_target.clone())
                    .chain(status.standby_health_targets.iter().cloned())
                    .collect();
                health.update(&targets);
                with_health(&mut status, &health);
                status.images = images_rx.borrow_and_update().clone();
                status.volumes = with_messages(
                    volumes_rx.borrow_and_update().clone(),
                    &reconciler.volume_messages(),
                    &declared_volumes_tx.borrow(),
                );
                status_tx.send_replace(Arc::new(status));
                heartbeat.store(now_millis(), Ordering::Relaxed);
                let deadline = tokio::time::Instant::now()
                    + wake
                        .map(|w| w.saturating_duration_since(Instant::now()))
                        .unwrap_or(RELIST)
                        .min(RELIST);
                // Until something calls for a pass. A refreshed image or volume list is
                // published into the snapshot as it comes, without a pass.
                loop {
                    tokio::select! {
                        changed = files.changed() => {
                            if changed.is_ok() {
                                desired = loader.load(&files.borrow_and_update());
                                declared_volumes_tx.send_if_modified(|v| {
                                    let new = crate::reconciler::inputs::declared_volumes(&desired);
                                    let changed = *v != new;
                                    *v = new;
                                    changed
                                });
                            }
                        }
                        Some(_) = reconciler.step_done() => {}
                        // A shim ended: its container exited, or the shim was killed.
                        () = linux.shim_ended() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                        // Only worth a pass when something waits (for a dependency to be
                        // healthy): a flapping check must not cost a pass per probe.
                        () = health.transitioned(), if reconciler.holds_any() => {}
                        () = health.changed() => {
                            let changed = health.take_changed();
                            republish(&status_tx, |s| with_new_results(s, changed));
                            continue;
                        }
                        Ok(()) = images_rx.changed() => {
                            let images = images_rx.borrow_and_update().clone();
                            republish(&status_tx, |s| s.images = images);
                            continue;
                        }
                        Ok(()) = volumes_rx.changed() => {
                            let volumes = with_messages(
                                volumes_rx.borrow_and_update().clone(),
                                &reconciler.volume_messages(),
                                &declared_volumes_tx.borrow(),
                            );
                            republish(&status_tx, |s| s.volumes = volumes);
                            continue;
                        }
                        _ = &mut shutdown => break 'passes,
                    }
                    break;
                }
                if last_repair.elapsed() >= args.resync {
                    reconciler.sweep_networks().await;
                    reconciler.repair_networks(true).await;
                    last_repair = Instant::now();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "observe containers");
                tokio::select! {
                    _ = tokio::time::sleep(RELIST) => {}
                    _ = &mut shutdown => break 'passes,
                }
            }
        }
    }
    tracing::info!("agent stopping; containers keep running");
    housekeeping.abort();
    volume_task.abort();
    unhealthy_task.abort();
    drift_task.abort();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), api_task).await {
        Ok(Ok(Err(e))) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Takes an exclusive lock on the state root for the agent's lifetime: two agents on
/// one state root would fight over the same containers. `wharf system reset` takes it
/// too, so it never takes apart what a running agent uses.
pub(crate) fn lock_state(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, AgentError> {
    let path = state.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::CreateDir {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        AgentError::Locked {
            path: state.to_owned(),
            lock: path,
        }
    })
}

/// How often `/v1/images` is refreshed from the store.
const IMAGES_REFRESH: Duration = Duration::from_secs(5);

/// Keeps `/v1/images` current and collects garbage: an image no container uses (declared
/// or still present) whose last use is older than `grace` goes, then every blob and layer
/// no remaining image names. Runs beside the reconcile loop; the store lock (exclusive
/// for the prune, shared for pulls) keeps the two from deleting what a pull reuses.
async fn image_housekeeping(
    store: ImageStore,
    status: watch::Receiver<Arc<StatusSnapshot>>,
    images: watch::Sender<Vec<ImageStatus>>,
    grace: Duration,
) {
    // Nothing is collected before the first reconcile pass has published which
    // containers exist: an empty snapshot would make every image look unused.
    let mut first = status.clone();
    if first.changed().await.is_err() {
        return;
    }
    let gc_every = (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let mut last_gc = Instant::now();
    loop {
        let snapshot = status.borrow().clone();
        let gc_due = last_gc.elapsed() >= gc_every;
        let store = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            if gc_due {
                collect_garbage(&store, &snapshot, grace);
            }
            image_statuses(&store, &snapshot)
        })
        .await;
        if gc_due {
            last_gc = Instant::now();
        }
        match result {
            Ok(Ok(list)) => {
                images.send_replace(list);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "list images"),
            Err(e) => tracing::warn!(error = %e, "image housekeeping task"),
        }
        tokio::time::sleep(IMAGES_REFRESH.min(gc_every)).await;
    }
}

/// Digests of the images every container of `snapshot` runs or will run.
fn images_in_use(
    store: &ImageStore,
    snapshot: &StatusSnapshot,
) -> std::collections::HashSet<String> {
    let mut keep = std::collections::HashSet::new();
    for c in &snapshot.containers {
        if let Some(d) = &c.image_digest {
            keep.insert(d.clone());
        }
        // A declared container not created yet (or about to be replaced) needs its image.
        if let Ok(Some(image)) = store.lookup(&c.image) {
            keep.insert(image.digest);
        }
    }
    keep
}

fn collect_garbage(store: &ImageStore, snapshot: &StatusSnapshot, grace: Duration) {
    let keep = images_in_use(store, snapshot);
    match store.prune(&keep, Some(grace)) {
        Ok(r) if !r.images.is_empty() || r.blobs > 0 || r.layers > 0 => tracing::info!(
            images = r.images.len(),
            blobs = r.blobs,
            layers = r.layers,
            bytes = r.bytes,
            "image garbage collected"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "image garbage collection"),
    }
}

fn image_statuses(
    store: &ImageStore,
    snapshot: &StatusSnapshot,
) -> Result<Vec<ImageStatus>, images::ImageError> {
    Ok(store
        .list()?
        .into_iter()
        .map(|i| {
            let used_by = snapshot
                .containers
                .iter()
                .filter(|c| c.image_digest.as_deref() == Some(i.digest.as_str()))
                .map(|c| c.name.clone())
                .collect();
            ImageStatus {
                references: i.references,
                digest: i.digest,
                size: i.size,
                layers: i.layers,
                last_used: i.last_used.map(crate::runtime::records::rfc3339),
                used_by,
            }
        })
        .collect())
}
