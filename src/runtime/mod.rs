//! The container runtime: the `Runtime` trait the reconciler drives, the built-in Linux
//! implementation (one shim process per container), and OCI config generation.

pub mod capabilities;
pub mod exec;
pub mod file_cache;
pub mod identity;
pub mod instance;
pub mod linux;
pub mod local;
pub mod process;
pub mod records;
pub mod rootfs_files;
pub mod shim;
pub mod shim_watch;
pub mod spec;
pub mod testing;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use local::{image_users, LinuxRuntime};
pub use process::{ImageConfig, ProcessPlan, ProcessRequest};
pub use records::{ContainerMeta, ExitRecord, LastState, Running};

/// What it takes to start a container.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub name: String,
    pub hostname: String,
    pub process: ProcessPlan,
    /// Unpacked image layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub read_only_rootfs: bool,
    pub network: NetworkMode,
    /// Files the runtime writes under the container's directory and bind-mounts at
    /// `/etc/<name>`: `hosts`, `hostname`, `resolv.conf`. The agent may later rewrite
    /// them in place (same inode) when peers come and go.
    pub etc_files: Vec<(String, String)>,
    /// The container's capabilities (`CAP_*`), e.g. from
    /// [`process::resolve_capabilities`]: bounding, effective and permitted sets.
    pub capabilities: Vec<String>,
    pub limits: Limits,
    /// Docker's `--privileged` (with every capability in `capabilities`).
    pub privileged: bool,
    /// `spec.mounts`: named volumes, binds and tmpfs, in mount order.
    pub mounts: Vec<crate::manifest::MountSpec>,
    /// The reconciler's part of the container's record, written before the start.
    pub meta: ContainerMeta,
    /// true: a new container (fresh writable layer, log and restart count); false: a
    /// restart of the same container (keeps them, counts the restart).
    pub fresh: bool,
}

/// Resource limits (`spec.resources`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Hard memory limit in bytes; over it, the kernel's OOM killer ends the container.
    pub memory: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// What a running container uses, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Working set: memory in use minus inactive file cache (what counts toward an OOM kill).
    pub memory_bytes: u64,
    /// CPU time used since the start, user and system, in seconds.
    pub cpu_seconds: f64,
    /// Processes (and threads) in the container.
    pub pids: u64,
}

/// Which network namespace a container gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A new namespace with only loopback (`networks: [none]`).
    #[default]
    Private,
    /// The host's namespace (`networks: [host]`).
    Host,
    /// A namespace prepared before the container (netns-first, as CNI does), pinned
    /// by a bind mount at this path.
    Join(PathBuf),
}

/// A container's state as observed from disk and the kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservedState {
    Running(Running),
    Exited(ExitRecord),
    /// Neither running nor with an exit record (e.g. after a reboot).
    Lost,
}

/// One container the runtime knows about.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: String,
    /// What the reconciler made it from; `None` for a create that died half way.
    pub meta: Option<ContainerMeta>,
    /// Why its record cannot be used (written by a newer wharf): the container is
    /// left exactly as it is.
    pub refused: Option<String>,
    pub state: ObservedState,
    /// How its previous run that had started ended.
    pub last_state: Option<LastState>,
    pub restart_count: u32,
    /// Seconds since the epoch of the latest start.
    pub started_at: Option<i64>,
    pub log_path: PathBuf,
    /// The previous run's output (`wharf logs --previous`).
    pub previous_log: Option<PreviousLog>,
    /// Resource usage while it runs.
    pub usage: Option<Usage>,
    /// Marked as the instance that serves its container (see [`instance`]).
    pub promoted: bool,
}

/// Where the previous run's output is: bytes `start..end` of `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLog {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
}

static INHERITED_NOFILE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Records the soft open-files limit the agent was started with, before it raises its
/// own to the hard limit: containers start with this one, as they would under the
/// service manager that started the agent (Go's runtime does the same for its
/// children). A soft limit of hundreds of thousands slows programs that loop over
/// every descriptor, and breaks those that still use `select`.
pub fn set_inherited_nofile(soft: u64) {
    let _ = INHERITED_NOFILE.set(soft);
}

/// See [`set_inherited_nofile`]; `None` when the agent did not record one.
pub fn inherited_nofile() -> Option<u64> {
    INHERITED_NOFILE.get().copied()
}

/// Errors of the runtime, named for the failed operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container could not be started: a problem of the container (bad command,
    /// missing user...), reported on its status as `failed`.
    #[error("{0}")]
    StartFailed(String),
    /// The spec cannot run on its image whatever is retried (a user the image does not
    /// have): `failed` until the manifest changes, and never retried under `Never`.
    #[error("{0}")]
    Unrunnable(String),
    #[error("prepare container {name}: {message}")]
    Prepare { name: String, message: String },
    #[error("spawn shim for {name}: {source}")]
    SpawnShim {
        name: String,
        source: std::io::Error,
    },
    #[error("stop container {name}: {message}")]
    Stop { name: String, message: String },
    #[error("remove container {name}: {message}")]
    Remove { name: String, message: String },
    #[error("promote container {name}: {message}")]
    Promote { name: String, message: String },
    #[error("list containers in {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::class::Classify for RuntimeError {
    /// Permanent: the image cannot run what the manifest asks (`Unrunnable`). A start
    /// that failed otherwise (a mount source missing, a cgroup busy), or a failed stop,
    /// remove or list, may work on another try.
    fn class(&self) -> crate::class::ErrorClass {
        match self {
            RuntimeError::Unrunnable(_) => crate::class::ErrorClass::Permanent,
            _ => crate::class::ErrorClass::Transient,
        }
    }
}

/// The reconciler's view of a container runtime. Implementations: [`LinuxRuntime`],
/// and small recording fakes in tests.
pub trait Runtime: Send + Sync + 'static {
    /// Every container this runtime instance created and has not removed.
    fn list(&self) -> impl Future<Output = Result<Vec<Observed>, RuntimeError>> + Send;
    /// Creates and starts a container; returns once its process runs (or failed).
    fn start(
        &self,
        req: StartRequest,
    ) -> impl Future<Output = Result<Running, RuntimeError>> + Send;
    /// Sends `signal`, waits up to `grace`, then SIGKILL; returns once it has exited.
    /// A container that is not running is success.
    fn stop(
        &self,
        name: &str,
        signal: nix::sys::signal::Signal,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a container (killing it if it still runs); not found is success.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a container to replace it: as [`Runtime::remove`], but its last run's
    /// output stays, as the previous log of the next container of that name.
    fn remove_for_replace(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Marks an instance as the one that serves its container, durably, before the
    /// traffic moves to it (see [`instance::roles`]).
    fn promote(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
