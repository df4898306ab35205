//! Named volumes: one folder per volume under `<state>/volumes/<name>/`, holding the
//! data (`data/`, what containers mount) and a small record (`volume.json`: reclaim
//! policy, whether a manifest declares it, whether it was populated, a pending delete).
//!
//! Docker's model, with Kubernetes' reclaim policy on top: a volume is created by a
//! `Volume` manifest or implicitly (`Retain`) by the first container mounting it; it is
//! populated from the image the first time it is mounted ([`populate`]); removing a
//! `Retain` volume's manifest only forgets it, removing a `Delete` one deletes the data
//! once no container, declared or still present, mounts it. Data is never deleted by
//! surprise: nothing is forgotten or deleted while some manifest file is broken without
//! a last good version ([`plan`] takes `complete`).
//!
//! Every record change (create, update, delete) happens under one `flock` on
//! `volumes/.lock`, shared by the agent and the shims of every container; a first fill
//! from an image runs under the volume's own lock (`.locks/<name>.fill`), and a running
//! container's shim holds `.locks/<name>` shared for the container's life.

pub mod housekeeping;
pub mod populate;
pub mod seam;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::ReclaimPolicy;
use crate::state;

pub use seam::{FakeVolumes, OnDisk, Volumes};
pub use sync::{plan, Action, Declared};

/// A failed volume operation, naming the volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name}: {op} {path}: {source}")]
    Io {
        name: String,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("volume {name}: {message}")]
    Failed { name: String, message: String },
}

/// What `volume.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    pub reclaim_policy: ReclaimPolicy,
    /// A `Volume` manifest declares it (false: created implicitly, or forgotten).
    pub declared: bool,
    /// Its `Delete` manifest went away: the data goes once no container mounts it.
    pub delete_requested: bool,
    /// It was mounted once, and filled from the image if the image had content there.
    pub populated: bool,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// The volumes of one state root.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

/// An exclusive hold on every volume's structure; released on drop.
pub struct Guard {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl VolumeStore {
    /// The store under `<state_root>/volumes`.
    pub fn new(state_root: &Path) -> Self {
        VolumeStore {
            root: state_root.join("volumes"),
        }
    }

    /// `<root>/<name>`: the record and the data.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// What containers mount.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("data")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("volume.json")
    }

    fn io(name: &str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
        let (name, path) = (name.to_owned(), path.to_owned());
        move |source| VolumeError::Io {
            name,
            op,
            path,
            source,
        }
    }

    /// Creates the store's folders: only root may enter them, since a container's root
    /// can put set-id binaries and device nodes in a volume (Docker's CVE-2021-41091).
    fn ensure_root(&self) -> Result<(), VolumeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let locks = self.root.join(".locks");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&locks)
            .map_err(Self::io("(store)", "create", &locks))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(Self::io("(store)", "chmod", &self.root))
    }

    /// Opens (creating) a lock file; makes the store's folders only the first time.
    fn open_lock(&self, path: &Path, name: &str) -> Result<fs::File, VolumeError> {
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        };
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_root()?;
                open()
            }
            other => other,
        }
        .map_err(Self::io(name, "open", path))
    }

    /// Takes the store lock (blocking).
    pub fn lock(&self) -> Result<Guard, VolumeError> {
        let path = self.root.join(".lock");
        let file = self.open_lock(&path, "(store)")?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Self::io("(store)", "lock", &path)(e.into()))?;
        Ok(Guard { _lock: lock })
    }

    /// The in-use lock of `name`, taken shared (blocking) and held by a container's shim
    /// for the container's whole life: the kernel's word that a running container mounts
    /// the volume, whatever the agent's snapshot says. Kept in `.locks/`, outside the
    /// volume's folder, so it outlives a delete.
    pub fn hold(&self, name: &str) -> Result<nix::fcntl::Flock<fs::File>, VolumeError> {
        let path = self.root.join(".locks").join(name);
        let file = self.open_lock(&path, name)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared)
            .map_err(|(_, e)| Self::io(name, "lock", &path)(e.into()))
    }

    /// The lock a first fill of `name` from an image holds (blocking, exclusive).
    pub fn fill_lock(&self, name: &str) -> Result<nix::fcntl::Flock<fs::File>, VolumeError> {
        let path = self.root.join(".locks").join(format!("{name}.fill"));
        let file = self.open_lock(&path, name)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Self::io(name, "lock", &path)(e.into()))
    }

    /// Whether a running container holds `name` (its in-use lock is taken).
    fn held(&self, name: &str) -> bool {
        let path = self.root.join(".locks").join(name);
        let Ok(file) = self.open_lock(&path, name) else {
            return true; // unknown: assume in use, delete nothing
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err()
    }

    /// The record of `name`; `None` if the volume does not exist.
    pub fn record(&self, name: &str) -> Result<Option<Record>, VolumeError> {
        let path = self.record_path(name);
        state::read_json(&path).map_err(Self::io(name, "read", &path))
    }

    /// Writes the record of `name` (with the lock held).
    pub fn write_record(&self, _guard: &Guard, name: &str, r: &Record) -> Result<(), VolumeError> {
        let path = self.record_path(name);
        state::write_json(&path, r).map_err(Self::io(name, "write", &path))
    }

    /// Creates `name` if it does not exist, with `record` (with the lock held). Returns
    /// its data path.
    pub fn create(
        &self,
        guard: &Guard,
        name: &str,
        record: &Record,
    ) -> Result<PathBuf, VolumeError> {
        let data = self.data_path(name);
        if self.record(name)?.is_none() {
            self.ensure_root()?;
            // The data folder may survive from a volume whose record was lost: keep it,
            // and never fill it from an image (a container may have it mounted).
            let existed = data.exists();
            fs::create_dir_all(&data).map_err(Self::io(name, "create", &data))?;
            crate::fault::point("volume-create:dir");
            let record = Record {
                created_at: now(),
                populated: record.populated || existed,
                ..record.clone()
            };
            self.write_record(guard, name, &record)?;
        }
        Ok(data)
    }

    /// The volume a container mounts: created implicitly (`Retain`, undeclared) if it
    /// does not exist yet. Returns its data path.
    pub fn ensure(&self, name: &str) -> Result<PathBuf, VolumeError> {
        let guard = self.lock()?;
        self.create(&guard, name, &Record::default())
    }

    /// Every volume on disk with its record, by name. A folder without a readable record
    /// is listed as an undeclared `Retain` volume already populated: kept, never deleted,
    /// never filled.
    pub fn list(&self) -> BTreeMap<String, Record> {
        let mut out = BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.root) else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let record = self.record(&name).ok().flatten().unwrap_or(Record {
                populated: true,
                ..Default::default()
            });
            out.insert(name, record);
        }
        out
    }

    /// Deletes `name` and its data (with the lock held): renamed away at once (a delete
    /// cut short never leaves a half volume listed as ready), then removed. The rest of a
    /// removal cut short is finished by [`VolumeStore::remove_trash`].
    pub fn delete(&self, _guard: &Guard, name: &str) -> Result<(), VolumeError> {
        let dir = self.dir(name);
        let trash = self.root.join(format!(".trash-{name}-{}", now()));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Self::io(name, "move to trash", &dir)(e)),
        }
        crate::fault::point("volume-delete:trash");
        fs::remove_dir_all(&trash).map_err(Self::io(name, "remove", &trash))
    }

    /// Removes what deletes cut short left in the store's trash.
    pub fn remove_trash(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".trash-") {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "remove volume trash");
                }
            }
        }
    }

    /// Plans and applies in one go, as the reconciler does over several passes (tests).
    #[cfg(test)]
    fn sync(
        &self,
        declared: &Declared,
        in_use: &BTreeSet<String>,
    ) -> Vec<Result<Action, VolumeError>> {
        let on_disk = self.list();
        let mut in_use = in_use.clone();
        in_use.extend(on_disk.keys().filter(|n| self.held(n)).cloned());
        plan(&on_disk, declared, &in_use)
            .into_iter()
            .map(|a| self.apply(&a).map(|()| a))
            .collect()
    }

    /// Applies one action of [`plan`] under the store's lock. Blocking.
    pub fn apply(&self, action: &Action) -> Result<(), VolumeError> {
        let guard = self.lock()?;
        match action {
            Action::Create { name, record } => {
                self.create(&guard, name, record)?;
            }
            Action::Update { name, record } => self.write_record(&guard, name, record)?,
            // Checked again at the last moment: a container may have started with it.
            Action::Delete { name } if self.held(name) => {
                return Err(VolumeError::Failed {
                    name: name.clone(),
                    message: "not deleted: a container started with it".into(),
                })
            }
            Action::Delete { name } => {
                self.delete(&guard, name)?;
                tracing::info!(volume = %name, "volume deleted");
            }
        }
        Ok(())
    }

    /// Bytes on disk under the volume's data (allocated blocks, as `du`), hard links
    /// counted once. Blocking: walks the tree.
    pub fn usage(&self, name: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let mut seen = BTreeSet::new();
        let mut total = 0;
        let mut stack = vec![self.data_path(name)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                total += meta.blocks() * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        total
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::sync::declared;
    use super::*;

    #[test]
    fn a_declared_volume_is_created_and_a_retained_one_outlives_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let none = BTreeSet::new();
        let done = store.sync(&declared(&[("data", ReclaimPolicy::Retain)]), &none);
        assert_eq!(done.len(), 1);
        fs::write(store.data_path("data").join("f"), b"kept").unwrap();
        assert!(store.record("data").unwrap().unwrap().declared);

        store.sync(&declared(&[]), &none);
        let record = store.record("data").unwrap().unwrap();
        assert!(!record.declared, "forgotten");
        assert!(!record.delete_requested);
        assert_eq!(
            fs::read(store.data_path("data").join("f")).unwrap(),
            b"kept"
        );
    }

    #[test]
    fn a_delete_volume_goes_only_once_unused() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let users = BTreeSet::from(["data".to_string()]);
        store.sync(&declared(&[("data", ReclaimPolicy::Delete)]), &users);
        store.sync(&declared(&[]), &users);
        assert!(store.record("data").unwrap().unwrap().delete_requested);
        assert!(store.data_path("data").exists());
        store.sync(&declared(&[]), &BTreeSet::new());
        assert!(!store.dir("data").exists());
    }

    #[test]
    fn a_volume_a_running_container_holds_is_not_deleted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let none = BTreeSet::new();
        store.sync(&declared(&[("data", ReclaimPolicy::Delete)]), &none);
        let mode = dir
            .path()
            .join("volumes")
            .metadata()
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "root only");
        // A shim holds it; the agent's snapshot does not know that container yet.
        let hold = store.hold("data").unwrap();
        store.sync(&declared(&[]), &none);
        assert!(store.data_path("data").is_dir());
        assert!(store.record("data").unwrap().unwrap().delete_requested);
        drop(hold);
        store.sync(&declared(&[]), &none);
        assert!(!store.dir("data").exists());
        let left: Vec<_> = fs::read_dir(dir.path().join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".trash"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_folder_without_a_record_is_kept_and_never_filled() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        fs::create_dir_all(store.data_path("old")).unwrap();
        let listed = &store.list()["old"];
        assert!(listed.populated && !listed.declared);
        store.ensure("old").unwrap();
        assert!(store.record("old").unwrap().unwrap().populated);
    }

    #[test]
    fn an_implicit_volume_is_retained_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let data = store.ensure("cache").unwrap();
        assert!(data.is_dir());
        let list = store.list();
        assert_eq!(list["cache"].reclaim_policy, ReclaimPolicy::Retain);
        assert!(!list["cache"].declared);
        store.sync(&declared(&[]), &BTreeSet::new());
        assert!(data.is_dir(), "an implicit volume is never deleted");
    }

    #[test]
    fn usage_counts_blocks_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let data = store.ensure("d").unwrap();
        fs::write(data.join("a"), vec![1u8; 64 * 1024]).unwrap();
        let one = store.usage("d");
        assert!(one >= 64 * 1024, "{one}");
        fs::hard_link(data.join("a"), data.join("b")).unwrap();
        assert_eq!(store.usage("d"), one);
    }
}
