//! Cgroups: this instance's container cgroups left without a record, then
//! `wharf/<instance>`, in every hierarchy (v1, v2 and a hybrid host's `unified`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Removed, ResetError};
use crate::runtime::linux::cgroups;
use crate::runtime::LinuxRuntime;

/// Where the cgroup hierarchies are mounted.
pub(super) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether `wharf/<instance>` has a folder in any hierarchy under `root`.
pub(super) fn instance_cgroup_exists(root: &Path, instance: &str) -> bool {
    !cgroup_dirs(root, &cgroups::instance_path(instance)).is_empty()
}

/// The folders of cgroup `path` under `root`: `root/path` (v2), and
/// `root/<hierarchy>/path` for each v1 hierarchy and a hybrid host's `unified`.
fn cgroup_dirs(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.join(path)];
    if let Ok(entries) = fs::read_dir(root) {
        // `cpu` and `cpuacct` are links to `cpu,cpuacct`: real folders only.
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(path)),
        );
    }
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    dirs
}

/// Container cgroups of this instance that no record accounts for (a crash between
/// cgroup and record), then `wharf/<instance>` (and `wharf` when no other instance
/// uses it), reported when it `existed` before the containers went. What stays is an
/// error naming its folders.
pub(super) async fn remove_cgroups(
    runtime: Arc<LinuxRuntime>,
    instance: &str,
    root: &Path,
    existed: bool,
) -> (Vec<Removed>, Vec<ResetError>) {
    let parent = cgroups::instance_path(instance);
    let orphans = tokio::task::spawn_blocking(move || runtime.remove_orphan_cgroups(&[]))
        .await
        .map_err(|e| ResetError::Task {
            what: format!("remove the cgroups under {parent}"),
            message: e.to_string(),
        });
    let (mut removed, mut errors) = (Vec::new(), Vec::new());
    match orphans {
        Ok(names) => removed.extend(
            names
                .iter()
                .map(|n| Removed::Cgroup(cgroups::container_path(instance, n))),
        ),
        Err(e) => errors.push(e),
    }
    let left = cgroup_dirs(root, &parent);
    if !left.is_empty() {
        errors.push(ResetError::RemoveCgroup {
            path: parent,
            dirs: left,
        });
    } else if existed {
        removed.push(Removed::Cgroup(parent));
    }
    (removed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_folders_are_found_in_every_hierarchy_and_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        for d in [
            "memory/wharf/abcd",
            "pids/wharf/abcd",
            "unified/wharf/abcd",
            "cpu",
        ] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink("memory", root.path().join("mem")).unwrap();
        let found = cgroup_dirs(root.path(), "wharf/abcd");
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["memory/wharf/abcd", "pids/wharf/abcd", "unified/wharf/abcd"]
        );

        let v2 = tempfile::tempdir().unwrap();
        fs::create_dir_all(v2.path().join("wharf/abcd")).unwrap();
        assert_eq!(
            cgroup_dirs(v2.path(), "wharf/abcd"),
            [v2.path().join("wharf/abcd")]
        );
    }
}
