//! Container cgroups through `cgroups-rs`, on cgroup v1 (hybrid, as on our machines)
//! and v2 (most users). Every container gets `wharf/<instance>/<name>`, so a second
//! agent on the host never touches our cgroups and leftovers are found by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::{hierarchies, Cgroup, CgroupPid};

/// Errors of cgroup management, each naming the cgroup path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("create cgroup {path}: {source}")]
    Create {
        path: String,
        source: cgroups_rs::error::Error,
    },
    #[error("add pid {pid} to cgroup {path}: {source}")]
    AddTask {
        path: String,
        pid: i32,
        source: cgroups_rs::error::Error,
    },
    #[error("set {what} of cgroup {path}: {source}")]
    SetLimit {
        path: String,
        what: String,
        source: cgroups_rs::error::Error,
    },
    #[error("cgroup {path} has no {controller} controller on this host")]
    MissingController { path: String, controller: String },
    #[error("remove cgroup {path}: {source}")]
    Remove {
        path: String,
        source: cgroups_rs::error::Error,
    },
}

/// The relative cgroup path of a container.
pub fn container_path(instance: &str, name: &str) -> String {
    format!("wharf/{instance}/{name}")
}

/// Creates (or reuses) the cgroup at `path` in every mounted controller.
///
/// The shared parents (`wharf`, `wharf/<instance>`) are removed when their last
/// container goes (see [`remove_parents_if_empty`]), possibly by another agent between
/// two of the `mkdir`s `cgroups-rs` makes here; it only logs such a failure, so this
/// checks the result and tries again.
pub fn ensure(path: &str) -> Result<Cgroup, CgroupError> {
    let mut attempts = 0;
    loop {
        let cg = Cgroup::new(hierarchies::auto(), path).map_err(|source| CgroupError::Create {
            path: path.to_owned(),
            source,
        })?;
        attempts += 1;
        if cg.exists() || attempts == 3 {
            return Ok(cg);
        }
    }
}

/// Moves process `pid` into the cgroup.
pub fn add_process(cg: &Cgroup, path: &str, pid: i32) -> Result<(), CgroupError> {
    cg.add_task_by_tgid(CgroupPid::from(pid as u64))
        .map_err(|source| CgroupError::AddTask {
            path: path.to_owned(),
            pid,
            source,
        })
}

/// Resource limits of a container (from the OCI config's `linux.resources`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Hard memory limit in bytes.
    pub memory: Option<i64>,
    /// CFS quota and period in microseconds (`cpus: 1.5` is 150000 per 100000).
    pub cpu_quota: Option<(i64, u64)>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
}

/// Writes `limits` into the cgroup (before any process of the container runs in it).
/// On cgroup v1 the memory+swap limit is set to twice the memory limit, Docker's default
/// for `--memory` without `--memory-swap`.
pub fn apply_limits(cg: &Cgroup, path: &str, limits: &Limits) -> Result<(), CgroupError> {
    use cgroups_rs::{cpu::CpuController, memory::MemController, pid::PidController, MaxValue};
    let err = |what: &str, source: cgroups_rs::error::Error| CgroupError::SetLimit {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    };
    if let Some(bytes) = limits.memory {
        let mem: &MemController = cg.controller_of().ok_or_else(|| missing(path, "memory"))?;
        mem.set_limit(bytes).map_err(|e| err("memory limit", e))?;
        // Only v1 has a separate memory+swap knob; a missing one (no swap accounting)
        // leaves swap as the host has it.
        if !cg.v2() {
            let _ = mem.set_memswap_limit(bytes.saturating_mul(2));
        }
    }
    if let Some((quota, period)) = limits.cpu_quota {
        let cpu: &CpuController = cg.controller_of().ok_or_else(|| missing(path, "cpu"))?;
        cpu.set_cfs_quota_and_period(Some(quota), Some(period))
            .map_err(|e| err("cpu quota", e))?;
    }
    if let Some(n) = limits.pids {
        let pids: &PidController = cg.controller_of().ok_or_else(|| missing(path, "pids"))?;
        pids.set_pid_max(MaxValue::Value(n))
            .map_err(|e| err("pids limit", e))?;
    }
    Ok(())
}

fn missing(path: &str, controller: &str) -> CgroupError {
    CgroupError::MissingController {
        path: path.to_owned(),
        controller: controller.to_owned(),
    }
}

/// How many processes of the cgroup the kernel's OOM killer has killed: `oom_kill` in
/// `memory.oom_control` (v1) or `memory.events` (v2). 0 when unknown.
pub fn oom_kills(path: &str) -> u64 {
    let v2 = hierarchies::is_cgroup2_unified_mode();
    let file = if v2 {
        PathBuf::from("/sys/fs/cgroup")
            .join(path)
            .join("memory.events")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(path)
            .join("memory.oom_control")
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Removes the cgroup at `path`; not found is success. A cgroup cannot be removed while
/// a process is still in it (the kernel answers EBUSY while the last one is being
/// reaped), so this retries briefly.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    let cg = Cgroup::load(hierarchies::auto(), path);
    if !cg.exists() {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..50 {
        match cg.delete() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last {
        Some(source) => Err(CgroupError::Remove {
            path: path.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}

/// Removes `wharf/<instance>`, then `wharf`, where no container cgroup is left in them,
/// so the last container of the last agent leaves nothing behind. One attempt each,
/// errors ignored: a parent another container still uses is simply kept.
pub fn remove_parents_if_empty(instance: &str) {
    remove_if_empty(&instance_path(instance));
    remove_if_empty("wharf");
}

/// Removes the cgroup at `path` if it exists and has no process; one attempt, errors
/// ignored (the kernel refuses while it has child cgroups).
fn remove_if_empty(path: &str) {
    let cg = Cgroup::load(hierarchies::auto(), path);
    if cg.exists() && cg.procs().is_empty() {
        let _ = cg.delete();
    }
}

/// The relative path of this instance's parent cgroup.
pub fn instance_path(instance: &str) -> String {
    format!("wharf/{instance}")
}

/// The pids in the cgroup at `path` (empty when it does not exist).
pub fn procs(path: &str) -> Vec<i32> {
    let cg = Cgroup::load(hierarchies::auto(), path);
    if !cg.exists() {
        return Vec::new();
    }
    cg.procs().into_iter().map(|p| p.pid as i32).collect()
}

/// Names of the container cgroups under `wharf/<instance>`, read from the memory (v1)
/// or unified (v2) hierarchy, so orphans can be found even without state files.
pub fn list_containers(instance: &str) -> Vec<String> {
    let base = if hierarchies::is_cgroup2_unified_mode() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    list_dirs(&base.join("wharf").join(instance))
}

fn list_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}
