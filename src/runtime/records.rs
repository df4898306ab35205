//! What the runtime keeps on disk per container, and the messages between the agent
//! and the shim.
//!
//! Under the state root, `containers/<name>/`:
//! - `config.json`  the OCI runtime config (a standard bundle config: crun can run it)
//! - `shim.json`    what the shim needs beyond it ([`ShimConfig`])
//! - `record.json`  the container's record ([`Record`], versioned): what it was made from
//!   ([`ContainerMeta`]), run number, restarts, last state, recent runs
//! - `exit.json`    written by the shim when the container's init exits ([`ExitRecord`])
//! - `container.log` stdout and stderr, written by the shim (every run, appended)
//! - `previous.log` the log of the container this one replaced
//! - `upper/`, `work/` the overlayfs writable layer
//! - `etc/`         `hosts`, `hostname`, `resolv.conf`, bind-mounted into the container
//!
//! Under the run dir, `containers/<name>/`: `rootfs/` (the mount point; the overlay is
//! mounted only inside the container's mount namespace) and `state.json` ([`Running`]),
//! which does not survive a reboot, as the process does not.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The shim's own configuration, next to the OCI `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimConfig {
    pub name: String,
    /// Which start of the container this is; tags `exit.json` and `state.json`.
    pub run: u64,
    /// Image layers, bottom first.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub log_path: PathBuf,
    pub exit_path: PathBuf,
    pub state_path: PathBuf,
    /// Relative cgroup path (`wharf/<instance>/<name>`).
    pub cgroup: String,
    /// `HOME` to add when the config's env lacks one (resolved from the image's passwd).
    pub home: Option<String>,
    /// The named volumes it mounts: held in use by the shim for the container's life,
    /// filled from the image before they are mounted (first mount only).
    #[serde(default)]
    pub volumes: Vec<crate::volumes::populate::Request>,
    /// Install Docker's default seccomp profile before exec (off when privileged).
    #[serde(default)]
    pub seccomp: bool,
    /// The soft open-files limit the container starts with: the agent's before it
    /// raised its own (see `runtime::inherited_nofile`). `None`: the shim's.
    #[serde(default)]
    pub nofile_soft: Option<u64>,
}

/// The container's init, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub run: u64,
    pub pid: i32,
    /// Clock ticks since boot (`/proc/PID/stat` field 22): with the pid, an identity
    /// that survives pid reuse.
    pub start_time: u64,
    /// Seconds since the epoch.
    pub started_at: i64,
    /// The same in milliseconds (0 in records from before it was kept).
    #[serde(default)]
    pub started_at_ms: i64,
    /// The shim's own pid and start time: while it lives, a dead init without an exit
    /// record is an exit being recorded, not a lost container.
    #[serde(default)]
    pub shim_pid: i32,
    #[serde(default)]
    pub shim_start_time: u64,
}

/// The shim's one-line answer to the agent on stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StartReport {
    Started(Running),
    Failed {
        message: String,
        /// The image cannot run this process (the command is missing or not
        /// executable): only an edit of the manifest helps.
        #[serde(default)]
        permanent: bool,
    },
}

/// How a run ended, written atomically by the shim after it reaped the init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub run: u64,
    /// The exit code; 128 + signal number when killed, as shells and Docker report it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished_at: i64,
    /// The same in milliseconds (0 in records from before it was kept).
    #[serde(default)]
    pub finished_at_ms: i64,
    /// Set when the container never started (exec failed, rootfs error...).
    pub error: Option<String>,
    /// The kernel's OOM killer ended it (memory limit exceeded).
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the container ended, when it was not its own doing and no `error` (e.g. its
    /// shim died and the agent stopped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The version of `record.json` this wharf writes. A record of a higher version was
/// written by a newer wharf: it is refused (the container is left alone), not misread.
/// Version 0 is a record from before versions, whose reconciler part lived in the OCI
/// config's annotations (read once by [`ContainerMeta::from_annotations`]).
pub const RECORD_VERSION: u32 = 1;

/// The per-container record: the database of what the agent made. Written atomically
/// before the shim is started (the intent), updated when the start is reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default)]
    pub version: u32,
    pub run: u64,
    /// Restarts of this container after a run that had started (a start that failed
    /// before the process ran is not a restart).
    pub restart_count: u32,
    /// Seconds since the epoch of the latest run's start; `None` until it has started.
    pub started_at: Option<i64>,
    /// How the previous run that had started ended (kubectl's `lastState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<LastState>,
    /// The latest runs, oldest first, at most [`HISTORY`]: when each started and ended,
    /// in milliseconds, so the restart backoff can be read back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunSummary>,
    /// Where in `container.log` the latest run's output begins.
    #[serde(default)]
    pub log_start: u64,
    /// The previous run's output: a range of `container.log` after a restart, of
    /// `previous.log` after a replace (`wharf logs --previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_log: Option<LogRange>,
    /// What the reconciler made the container from; `None` only in a half-made or
    /// pre-version record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ContainerMeta>,
}

/// A run's output: bytes `start..end` of a file of the container's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRange {
    /// `container.log` or `previous.log`.
    pub file: String,
    pub start: u64,
    pub end: u64,
}

/// Why the agent stopped a run (see [`Paths::stop_reason`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReason {
    pub run: u64,
    pub reason: String,
}

/// How many runs [`Record::history`] keeps.
pub const HISTORY: usize = 16;

/// One run of a container, as kept in [`Record::history`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub run: u64,
    /// Milliseconds since the epoch.
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
}

/// How a run ended, kept after the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastState {
    pub exit_code: i32,
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Seconds since the epoch.
    pub started_at: Option<i64>,
    pub finished_at: i64,
    /// Why it ended when that was not its own doing (see [`ExitRecord::message`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The reconciler's part of a container's record: what it was made from and what it
/// was given, so a restarted agent knows it without reading anything back from the
/// kernel or the OCI config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMeta {
    /// The manifest object it was created from.
    pub spec: Option<crate::manifest::Container>,
    /// The effective spec hash that decides replace-or-keep.
    pub hash: String,
    /// The manifest file, relative to the manifests folder.
    pub source: String,
    pub image: String,
    pub image_digest: String,
    /// `SIGTERM` unless the spec or the image says otherwise.
    pub stop_signal: String,
    /// Bridge networks it is attached to, in interface order.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<crate::net::Address>,
    #[serde(default)]
    pub ports: Vec<crate::net::driver::PortMapping>,
    /// The named volumes it mounts.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// How many times a container of this name was created (fresh) by this state root.
    #[serde(default)]
    pub generation: u64,
}

/// Annotation keys of records from before [`RECORD_VERSION`] 1.
mod legacy {
    pub const SPEC_HASH: &str = "io.wharf.spec-hash";
    pub const CONTAINER: &str = "io.wharf.container";
    pub const SOURCE: &str = "io.wharf.source";
    pub const IMAGE: &str = "io.wharf.image";
    pub const IMAGE_DIGEST: &str = "io.wharf.image-digest";
    pub const STOP_SIGNAL: &str = "io.wharf.stop-signal";
    pub const VOLUMES: &str = "io.wharf.volumes";
    pub const ADDRESSES: &str = "io.wharf.addresses";
    pub const NETWORKS: &str = "io.wharf.networks";
    pub const PORTS: &str = "io.wharf.ports";
}

impl ContainerMeta {
    /// The meta of a container created by a wharf from before record versions, from
    /// its OCI config's annotations; `None` without a spec hash (not one of ours).
    pub fn from_annotations(a: &std::collections::HashMap<String, String>) -> Option<Self> {
        let json = |key: &str| a.get(key).map(String::as_str).unwrap_or("");
        Some(ContainerMeta {
            hash: a.get(legacy::SPEC_HASH)?.clone(),
            spec: serde_json::from_str(json(legacy::CONTAINER)).ok(),
            source: json(legacy::SOURCE).to_owned(),
            image: json(legacy::IMAGE).to_owned(),
            image_digest: json(legacy::IMAGE_DIGEST).to_owned(),
            stop_signal: json(legacy::STOP_SIGNAL).to_owned(),
            networks: serde_json::from_str(json(legacy::NETWORKS)).unwrap_or_default(),
            addresses: serde_json::from_str(json(legacy::ADDRESSES)).unwrap_or_default(),
            ports: serde_json::from_str(json(legacy::PORTS)).unwrap_or_default(),
            volumes: json(legacy::VOLUMES)
                .split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect(),
            generation: 0,
        })
    }
}

/// Why a record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has version {version}, newer than the {RECORD_VERSION} this wharf knows: it was written by a newer wharf; the container is left as it is (upgrade wharf, or remove it by hand)", path.display())]
    UnknownVersion { path: PathBuf, version: u32 },
}

impl Record {
    /// Reads `path`; a missing file is `Ok(None)`, a newer version an error.
    pub fn load(path: &Path) -> Result<Option<Record>, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            version: u32,
        }
        let read = |source| RecordError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let v: Version = serde_json::from_slice(&bytes).map_err(|e| read(e.into()))?;
        if v.version > RECORD_VERSION {
            return Err(RecordError::UnknownVersion {
                path: path.to_owned(),
                version: v.version,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| read(e.into()))
    }

    /// Appends a run to the history, keeping the last [`HISTORY`].
    pub fn push_history(&mut self, run: RunSummary) {
        self.history.retain(|r| r.run != run.run);
        self.history.push(run);
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }
}

/// Paths of one container.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Paths {
    pub fn new(state_root: &Path, run_root: &Path, name: &str) -> Self {
        Paths {
            dir: state_root.join("containers").join(name),
            run_dir: run_root.join("containers").join(name),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn shim_config(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("record.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    /// The log of the container this one replaced.
    pub fn previous_log(&self) -> PathBuf {
        self.dir.join("previous.log")
    }
    /// Where a removal that keeps the log leaves it (and its range, as JSON) for the
    /// next container of the name: `containers/.kept/<name>.log`, `.json`.
    pub fn kept_log(&self) -> (PathBuf, PathBuf) {
        let parent = self.dir.parent().unwrap_or(&self.dir).join(".kept");
        // By container, not instance: a replace of `web.alt` leaves it for `web`.
        let instance = self.dir.file_name().unwrap_or_default().to_string_lossy();
        let name = super::instance::container_of(&instance);
        (
            parent.join(format!("{name}.log")),
            parent.join(format!("{name}.json")),
        )
    }
    /// Why the agent stopped the current run, when it was not the manifest's doing
    /// (an unhealthy container): `{"run": N, "reason": "..."}`, read into `lastState`.
    pub fn stop_reason(&self) -> PathBuf {
        self.dir.join("stop-reason.json")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// Files bind-mounted at `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.run_dir.join("rootfs")
    }
    pub fn state(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC) with milliseconds, for a time in milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 3339 (UTC) for a time in seconds since the epoch.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
