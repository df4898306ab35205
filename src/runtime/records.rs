//! What the runtime keeps on disk per container, and the messages between the agent
//! and the shim.
//!
//! Under the state root, `containers/<name>/`:
//! - `config.json`  the OCI runtime config (a standard bundle config: crun can run it)
//! - `shim.json`    what the shim needs beyond it ([`ShimConfig`])
//! - `record.json`  the runtime's record ([`Record`]): run number, restarts, start time
//! - `exit.json`    written by the shim when the container's init exits ([`ExitRecord`])
//! - `container.log` stdout and stderr, written by the shim
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
    Failed { message: String },
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

/// The runtime's per-container record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub run: u64,
    pub restart_count: u32,
    pub started_at: Option<i64>,
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

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
