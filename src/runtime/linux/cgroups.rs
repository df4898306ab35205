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
pub fn ensure(path: &str) -> Result<Cgroup, CgroupError> {
    Cgroup::new(hierarchies::auto(), path).map_err(|source| CgroupError::Create {
        path: path.to_owned(),
        source,
    })
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

/// Removes the cgroup at `path` if it exists and is empty; one attempt, errors ignored
/// (used for the per-instance parent, which other containers may still use).
pub fn remove_if_empty(path: &str) {
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
