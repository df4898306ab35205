//! Garbage collection: drop unwanted images, then every blob and unpacked layer that no
//! remaining image record names (mark and sweep, as containerd's GC does over its
//! content and snapshots).
//!
//! Runs under the exclusive store lock, so no pull or import is between writing a blob
//! and writing the record that names it. The one thing the store cannot know is which
//! images containers use: the caller passes those digests (`keep`), and nothing of
//! theirs is touched — an unpacked layer is an overlay lowerdir of running containers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::catalog::remove_file_durably;
use super::content::{digest_hex, temp_name};
use super::reference::validate_digest;
use super::store::{ImageRecord, ImageStore};
use super::ImageError;

/// In-flight downloads and unpacks live in `tmp/`; anything older than this was left by
/// a crashed process (a pull that slow would hold the store lock, excluding prune).
const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Digests of the image records removed.
    pub images: Vec<String>,
    /// References removed with them (only with a grace period).
    pub references: Vec<String>,
    /// Blobs deleted.
    pub blobs: usize,
    /// Unpacked layer directories deleted.
    pub layers: usize,
    /// Leftover temp files and directories deleted.
    pub temp_entries: usize,
    /// Bytes freed (apparent sizes).
    pub bytes: u64,
}

impl ImageStore {
    /// Removes images nobody wants, then all content no remaining image names.
    ///
    /// An image goes when its digest is not in `keep` (images containers use) and
    /// either no reference names it (dangling: `wharf image prune`), or, when `grace`
    /// is given (the agent's GC), it was last used or pulled longer than `grace` ago —
    /// its references go with it. Then every blob and layer directory that no remaining
    /// record names is deleted, and `tmp/` entries older than an hour.
    ///
    /// Blocking (waits for the exclusive lock); call from `spawn_blocking`.
    pub fn prune(
        &self,
        keep: &HashSet<String>,
        grace: Option<Duration>,
    ) -> Result<PruneReport, ImageError> {
        let _lock = self.exclusive_lock()?;
        let mut report = PruneReport::default();
        let now = SystemTime::now();
        let refs = self.all_refs()?;
        let records = self.all_records()?;
        let mut refs_by_digest: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in &refs {
            refs_by_digest
                .entry(r.digest.as_str())
                .or_default()
                .push(r.reference.as_str());
        }

        // 1. Mark: which records stay.
        let mut remaining = Vec::new();
        let mut doomed = Vec::new();
        for record in records {
            let names = refs_by_digest.get(record.digest.as_str());
            let expired = |g: Duration| {
                let last = self.last_activity(&record, names.map_or(&[][..], |v| v));
                now.duration_since(last).is_ok_and(|age| age > g)
            };
            let unwanted =
                !keep.contains(&record.digest) && (names.is_none() || grace.is_some_and(expired));
            if unwanted {
                doomed.push(record);
            } else {
                remaining.push(record);
            }
        }

        // 2. Remove in the reverse of the write order: references (including any whose
        //    record is gone, which `lookup` could never use), then records.
        let live_digests: HashSet<&str> = remaining.iter().map(|r| r.digest.as_str()).collect();
        for r in &refs {
            if !live_digests.contains(r.digest.as_str()) {
                remove_file_durably(&self.ref_path(&r.reference))?;
                report.references.push(r.reference.clone());
            }
        }
        for record in &doomed {
            remove_file_durably(&self.record_path(&record.digest))?;
            remove_file_durably(&self.used_path(&record.digest))?;
            report.images.push(record.digest.clone());
        }

        // 3. Sweep what no remaining record names.
        let mut live_blobs = HashSet::new();
        let mut live_layers = HashSet::new();
        for r in &remaining {
            live_blobs.extend(record_blobs(r).map(|d| digest_hex(d).to_string()));
            live_layers.extend(r.layers.iter().map(|l| digest_hex(&l.chain_id).to_string()));
        }
        self.sweep_blobs(&live_blobs, &mut report)?;
        self.sweep_layers(&live_layers, &mut report)?;
        self.sweep_tmp(now, &mut report);
        self.sweep_used(&live_digests);
        tracing::debug!(
            images = report.images.len(),
            blobs = report.blobs,
            layers = report.layers,
            bytes = report.bytes,
            "pruned image store"
        );
        Ok(report)
    }

    /// Blobs plus unpacked layers of one image, in bytes (see [`super::ImageSummary`]).
    pub(crate) fn image_size(&self, record: &ImageRecord) -> u64 {
        let blobs: HashSet<&str> = record_blobs(record).collect();
        let blob_bytes: u64 = blobs
            .iter()
            .filter_map(|d| fs::symlink_metadata(self.content().blob_path(d)).ok())
            .map(|m| m.len())
            .sum();
        let layer_bytes: u64 = record
            .layers
            .iter()
            .map(|l| self.layer_size(&l.chain_id))
            .sum();
        blob_bytes + layer_bytes
    }

    /// Apparent size of an unpacked layer, cached: layers never change once in place.
    fn layer_size(&self, chain_id: &str) -> u64 {
        let cache = &self.inner().layer_sizes;
        if let Some(s) = cache.lock().ok().and_then(|c| c.get(chain_id).copied()) {
            return s;
        }
        let path = self.layer_path(chain_id);
        if !path.is_dir() {
            return 0;
        }
        let size = tree_size(&path);
        if let Ok(mut c) = cache.lock() {
            c.insert(chain_id.to_string(), size);
        }
        size
    }

    /// The latest of: last use by a container, the record's write (pull or import),
    /// any reference's write (tag). A fresh pull is never older than the grace period.
    fn last_activity(&self, record: &ImageRecord, names: &[&str]) -> SystemTime {
        let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        std::iter::once(self.last_used(&record.digest))
            .chain(std::iter::once(mtime(&self.record_path(&record.digest))))
            .chain(names.iter().map(|n| mtime(&self.ref_path(n))))
            .flatten()
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn sweep_blobs(
        &self,
        live: &HashSet<String>,
        report: &mut PruneReport,
    ) -> Result<(), ImageError> {
        let dir = self.root().join("blobs/sha256");
        for name in dir_names(&dir)? {
            // Only names that are digests are ours to judge; leave anything else.
            if live.contains(&name) || validate_digest(&format!("sha256:{name}")).is_err() {
                continue;
            }
            let path = dir.join(&name);
            let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove_file_durably(&path)?;
            report.blobs += 1;
            report.bytes += size;
        }
        Ok(())
    }

    /// A layer directory is renamed into `tmp/` and deleted there: the rename is atomic,
    /// so a crash mid-delete never leaves a half layer under a name `lookup` trusts.
    fn sweep_layers(
        &self,
        live: &HashSet<String>,
        report: &mut PruneReport,
    ) -> Result<(), ImageError> {
        let dir = self.root().join("layers");
        for name in dir_names(&dir)? {
            if live.contains(&name) || validate_digest(&format!("sha256:{name}")).is_err() {
                continue;
            }
            let path = dir.join(&name);
            let size = self.layer_size(&format!("sha256:{name}"));
            let doomed = self.content().tmp_dir().join(temp_name("gc-layer", &name));
            fs::rename(&path, &doomed).map_err(|source| ImageError::RemoveContent {
                path: path.clone(),
                source,
            })?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| ImageError::RemoveContent {
                    path: dir.clone(),
                    source,
                })?;
            if let Ok(mut c) = self.inner().layer_sizes.lock() {
                c.remove(&format!("sha256:{name}"));
            }
            // Left in tmp/ on failure; the next prune retries it.
            if let Err(e) = fs::remove_dir_all(&doomed) {
                tracing::warn!(path = %doomed.display(), error = %e, "cannot delete pruned layer");
            }
            report.layers += 1;
            report.bytes += size;
        }
        Ok(())
    }

    /// Best effort: a leftover that cannot be deleted now is retried next time.
    fn sweep_tmp(&self, now: SystemTime, report: &mut PruneReport) {
        let dir = self.content().tmp_dir();
        let Ok(names) = dir_names(&dir) else { return };
        for name in names {
            let path = dir.join(&name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > TMP_MAX_AGE);
            // Layers renamed here by a prune that failed to delete them are garbage
            // whatever their age.
            if !old && !name.starts_with("gc-layer-") {
                continue;
            }
            let size = if meta.is_dir() {
                tree_size(&path)
            } else {
                meta.len()
            };
            let result = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {
                    report.temp_entries += 1;
                    report.bytes += size;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete temp leftover")
                }
            }
        }
    }

    /// Last-use markers of images that are gone.
    fn sweep_used(&self, live: &HashSet<&str>) {
        let dir = self.root().join("used");
        let Ok(names) = dir_names(&dir) else { return };
        for name in names {
            if !live.contains(format!("sha256:{name}").as_str()) {
                let _ = fs::remove_file(dir.join(name));
            }
        }
    }
}

/// Every blob a record names: the resolved digest (an index, for multi-platform
/// images), the platform manifest, the config and the layers.
fn record_blobs(r: &ImageRecord) -> impl Iterator<Item = &str> {
    [
        r.digest.as_str(),
        r.manifest_digest.as_str(),
        r.config_digest.as_str(),
    ]
    .into_iter()
    .chain(r.layers.iter().map(|l| l.digest.as_str()))
}

fn dir_names(dir: &Path) -> Result<Vec<String>, ImageError> {
    let err = |source| ImageError::RemoveContent {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(err)? {
        out.push(e.map_err(err)?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Apparent size of a tree without following symlinks; a hard-linked file counts once.
pub(crate) fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() <= 1 || seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
