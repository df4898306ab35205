//! Paths: the check that a root holds only what wharf makes, the mounts under a root
//! (from `/proc/self/mountinfo`), and removing the run dir and the state root without
//! ever deleting through a mount.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{Removed, ResetError};
use crate::images::{LockMode, StoreLock};
use crate::net::netns;

/// What wharf makes at the top of the state root. A root holding anything else (but
/// temp files and sockets) is not reset: it is probably not a state root.
pub(super) const STATE_ENTRIES: &[&str] = &[
    "agent.lock",
    "manifests-last-good.json",
    "containers",
    "images",
    "networks",
    "volumes",
];

/// What wharf makes at the top of the run dir (besides the endpoint's socket, if
/// `--listen unix:` put it there).
pub(super) const RUN_ENTRIES: &[&str] = &["containers", "netns"];

/// Refuses a root that holds what wharf does not make; a missing root is fine.
pub(super) fn check_entries(
    root: &Path,
    flag: &'static str,
    known: &[&str],
) -> Result<(), ResetError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ResetError::ReadDir {
                path: root.to_owned(),
                source,
            })
        }
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ResetError::ReadDir {
            path: root.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temp files of atomic writes are hidden; an endpoint socket may live here.
        let socket = entry.file_type().is_ok_and(|t| t.is_socket());
        if !(known.contains(&name.as_str()) || name.starts_with('.') || socket) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(ResetError::ForeignEntries {
        path: root.to_owned(),
        flag,
        entries: foreign,
    })
}

/// Mount points strictly under `root` (deepest first) and their filesystem types, from
/// `/proc/self/mountinfo` (proc(5): field 5 is the mount point, octal-escaped; the type
/// follows the ` - ` separator).
fn mounts_under(root: &Path) -> io::Result<Vec<(PathBuf, String)>> {
    let root = root.canonicalize()?;
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<(PathBuf, String)> = table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = PathBuf::from(unescape(left.split(' ').nth(4)?));
            let fstype = right.split(' ').next()?.to_owned();
            (point != root && point.starts_with(&root)).then_some((point, fstype))
        })
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    Ok(mounts)
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `root` recursively unless something is mounted under it: deleting through a
/// mount would delete what it shows. Network namespaces pinned there are unmounted
/// first (they are this instance's); any other mount keeps the folder.
fn remove_tree(root: &Path, netns_ok: bool, removed: &mut Vec<Removed>) -> Result<(), ResetError> {
    let mounts = mounts_under(root).map_err(ResetError::ReadMounts)?;
    for (point, fstype) in mounts {
        if netns_ok && fstype == "nsfs" {
            netns::remove(&point)?;
            removed.push(Removed::Netns(point));
        } else {
            return Err(ResetError::MountedUnder {
                path: root.to_owned(),
                mount: point,
            });
        }
    }
    fs::remove_dir_all(root).map_err(|source| ResetError::RemoveDir {
        path: root.to_owned(),
        source,
    })
}

pub(super) fn remove_run_dir(run_dir: &Path) -> (Vec<Removed>, Vec<ResetError>) {
    let mut removed = Vec::new();
    if !run_dir.exists() {
        return (removed, Vec::new());
    }
    match remove_tree(run_dir, true, &mut removed) {
        Ok(()) => {
            removed.push(Removed::RunDir(run_dir.to_owned()));
            (removed, Vec::new())
        }
        Err(e) => (removed, vec![e]),
    }
}

/// `--purge`: the whole state root, once nothing uses it. The image store's exclusive
/// lock is taken first, so a `wharf pull` in progress finishes rather than writes into
/// a folder being deleted.
pub(super) async fn remove_state_root(state: &Path) -> (Vec<Removed>, Vec<ResetError>) {
    let mut removed = Vec::new();
    if !state.exists() {
        return (removed, Vec::new());
    }
    let images = state.join("images");
    let store_lock = if images.is_dir() {
        let root = images.clone();
        match tokio::task::spawn_blocking(move || StoreLock::acquire(&root, LockMode::Exclusive))
            .await
        {
            Ok(Ok(lock)) => Some(lock),
            Ok(Err(e)) => return (removed, vec![e.into()]),
            Err(e) => {
                return (
                    removed,
                    vec![ResetError::Task {
                        what: format!("lock the image store {}", images.display()),
                        message: e.to_string(),
                    }],
                )
            }
        }
    } else {
        None
    };
    let result = remove_tree(state, false, &mut removed);
    drop(store_lock);
    match result {
        Ok(()) => {
            removed.push(Removed::StateRoot(state.to_owned()));
            (removed, Vec::new())
        }
        Err(e) => (removed, vec![e]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_with_entries_wharf_does_not_make_is_refused_and_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        check_entries(&root, "state", STATE_ENTRIES).unwrap();
        fs::create_dir_all(root.join("images")).unwrap();
        fs::create_dir_all(root.join("volumes")).unwrap();
        fs::write(root.join("agent.lock"), "").unwrap();
        fs::write(root.join(".networks.json.tmp.1.0"), "").unwrap();
        std::os::unix::net::UnixListener::bind(root.join("api.sock")).unwrap();
        check_entries(&root, "state", STATE_ENTRIES).unwrap();

        fs::create_dir_all(root.join("dpkg")).unwrap();
        fs::write(root.join("notes.txt"), "").unwrap();
        let e = check_entries(&root, "state", STATE_ENTRIES).unwrap_err();
        assert!(
            matches!(&e, ResetError::ForeignEntries { entries, .. } if entries == &["dpkg", "notes.txt"]),
            "{e}"
        );
        assert!(e.to_string().contains("is --state right?"), "{e}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/run/my\040dir\134x"), r"/run/my dir\x");
        assert_eq!(unescape(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn a_folder_without_mounts_is_removed_and_its_mounts_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        fs::create_dir_all(root.join("containers/web/rootfs")).unwrap();
        assert!(mounts_under(&root).unwrap().is_empty());
        let mut removed = Vec::new();
        remove_tree(&root, true, &mut removed).unwrap();
        assert!(!root.exists());
        assert!(removed.is_empty());
        // `/proc` is a mount under `/`.
        let mounts = mounts_under(Path::new("/")).unwrap();
        assert!(
            mounts
                .iter()
                .any(|(p, t)| p == Path::new("/proc") && t == "proc"),
            "{mounts:?}"
        );
    }
}
