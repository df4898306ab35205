//! The status snapshot: what the agent publishes and the HTTP handlers only read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container's phase, as in `interfaces.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Waiting: image pull, dependencies, backoff.
    #[default]
    Pending,
    Running,
    /// Stopped and not to be restarted by its policy.
    Exited,
    /// Cannot be created or started; `message` says why.
    Failed,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerState::Pending => "pending",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Failed => "failed",
        })
    }
}

/// One container object of `/v1/containers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    /// The container's init as seen from the host.
    pub pid: Option<i32>,
    pub image: String,
    pub image_digest: Option<String>,
    pub restart_count: u32,
    pub exit_code: Option<i32>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The manifest file, relative to the manifests folder.
    pub source: Option<String>,
    pub spec_hash: Option<String>,
    /// The last error, human-readable.
    pub message: Option<String>,
    /// Its addresses, one per attached network.
    #[serde(default)]
    pub addresses: Vec<crate::net::Address>,
    /// What it uses now (while it runs), from its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::runtime::Usage>,
    /// The named volumes it mounts (its running version and its declared one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// How many times a container of this name was created from a changed spec (1 for
    /// the first; a replace adds one, a restart does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// How its previous run ended (kubectl's `lastState.terminated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<LastStateStatus>,
    /// RFC 3339, UTC, with milliseconds: when the next restart or retry is due, while
    /// it backs off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<String>,
    /// `starting`, `healthy` or `unhealthy` while it runs, if it has a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::Health>,
    /// Its healthcheck's last results, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::health::ProbeResult>,
    /// What the health monitor probes, while it runs with a healthcheck (not
    /// serialised).
    #[serde(skip)]
    pub health_target: Option<crate::health::HealthTarget>,
    /// Where the shim writes the container's stdout and stderr (not serialised).
    #[serde(skip)]
    pub log_path: Option<PathBuf>,
    /// Where the previous run's output is (not serialised).
    #[serde(skip)]
    pub previous_log: Option<crate::runtime::PreviousLog>,
}

/// How a container's previous run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastStateStatus {
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// `Completed` (exit 0), `OOMKilled`, or `Error`, as kubectl says.
    pub reason: String,
    #[serde(rename = "oomKilled")]
    pub oom_killed: bool,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    pub finished_at: String,
    /// Why it ended, when that was not its own doing (its shim died...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One error in a manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// One entry of `/v1/manifests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestReport {
    /// Relative to the manifests folder.
    pub file: String,
    /// `Kind/name` of every object the file declares (its last good version if invalid).
    pub objects: Vec<String>,
    pub errors: Vec<ManifestError>,
}

/// One entry of `/v1/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Normalised references naming it (empty for an image kept only because it is used).
    pub references: Vec<String>,
    /// The digest its reference resolved to (`sha256:…`).
    pub digest: String,
    /// Bytes on disk: its blobs and unpacked layers (layers shared with other images are
    /// counted for each).
    pub size: u64,
    pub layers: usize,
    /// RFC 3339, UTC: when a container last started from it.
    pub last_used: Option<String>,
    /// Containers (by name) created from it.
    pub used_by: Vec<String>,
}

/// One entry of `/v1/volumes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    /// The data folder on the host.
    pub path: String,
    /// Bytes on disk (allocated blocks, as `du`), refreshed every few seconds.
    pub size: u64,
    pub reclaim_policy: crate::manifest::ReclaimPolicy,
    /// A `Volume` manifest declares it (false: created implicitly by a mount, or its
    /// `Retain` manifest was removed).
    pub declared: bool,
    /// The manifest file declaring it.
    pub source: Option<String>,
    /// `pending` (declared, not made yet: `message` says why once a try failed),
    /// `ready`, or `deleting`: its `Delete` manifest was removed and the data goes once
    /// no container mounts it.
    pub state: String,
    /// Filled from the image (or found empty there) at its first mount.
    pub populated: bool,
    /// RFC 3339, UTC.
    pub created_at: Option<String>,
    /// Containers (by name) that mount it.
    pub used_by: Vec<String>,
    /// Why the reconciler could not bring it to its manifest yet (with the next try).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Everything the endpoint shows, published atomically as one value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub containers: Vec<ContainerStatus>,
    pub manifests: Vec<ManifestReport>,
    pub images: Vec<ImageStatus>,
    pub networks: Vec<crate::net::NetworkStatus>,
    pub volumes: Vec<VolumeStatus>,
    /// What the health monitor probes besides the containers' own targets: the new
    /// versions of StartFirst updates (not serialised).
    #[serde(skip)]
    pub standby_health_targets: Vec<crate::health::HealthTarget>,
}

impl StatusSnapshot {
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }
}
