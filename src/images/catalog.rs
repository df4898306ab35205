//! What is in the store, and the cheap operations on references: list, tag, remove,
//! mark used. Removal of data (blobs, layers) is the garbage collector's (`gc`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::content::digest_hex;
use super::reference::{normalize_reference, pinned_digest, validate_digest};
use super::store::{read_record, ImageRecord, ImageStore, RefRecord};
use super::ImageError;

/// One image in the store, as `wharf images` and `/v1/images` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSummary {
    /// Normalised references naming the image, sorted; empty for a dangling image
    /// (kept because a container uses it, or not yet pruned).
    pub references: Vec<String>,
    /// The digest references resolve to (`sha256:…`).
    pub digest: String,
    /// Bytes on disk: the image's blobs plus its unpacked layers (apparent sizes, hard
    /// links once). Content shared with other images is counted in each of them, as
    /// Docker's `SIZE` column does.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// When a container last used the image (unix seconds), if ever.
    pub last_used: Option<i64>,
    /// The config's `created` timestamp (RFC 3339), when the image has one.
    pub created: Option<String>,
}

impl ImageStore {
    /// Every image in the store with its references and disk usage, sorted by first
    /// reference (dangling images last). Takes no lock: it only reads complete records.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut refs_by_digest: HashMap<String, Vec<String>> = HashMap::new();
        for r in self.all_refs()? {
            refs_by_digest
                .entry(r.digest)
                .or_default()
                .push(r.reference);
        }
        let mut out = Vec::new();
        for record in self.all_records()? {
            let mut references = refs_by_digest.remove(&record.digest).unwrap_or_default();
            references.sort();
            out.push(ImageSummary {
                size: self.image_size(&record),
                layers: record.layers.len(),
                last_used: self.last_used(&record.digest).map(unix_secs),
                created: self.created(&record),
                digest: record.digest,
                references,
            });
        }
        out.sort_by(|a, b| {
            (a.references.is_empty(), &a.references, &a.digest).cmp(&(
                b.references.is_empty(),
                &b.references,
                &b.digest,
            ))
        });
        Ok(out)
    }

    /// Makes `dest` name the image `src` names (moving `dest` if it named another
    /// image, as `docker tag` does). `src` may be a reference, `repo@sha256:…` or a bare
    /// `sha256:…` digest.
    pub fn tag(&self, src: &str, dest: &str) -> Result<(), ImageError> {
        let _lock = self.shared_lock()?;
        let digest = self
            .resolve_local(src)?
            .ok_or_else(|| ImageError::NotFound {
                reference: src.to_string(),
            })?;
        let dest_norm = normalize_reference(dest)?;
        if let Some(pinned) = pinned_digest(&dest_norm) {
            if pinned != digest {
                return Err(ImageError::ParseReference {
                    reference: dest.to_string(),
                    reason: format!("pins {pinned}, but {src} is {digest}"),
                });
            }
        }
        self.write_ref(&dest_norm, &digest)
    }

    /// Removes the reference `reference` (a bare `sha256:…` removes every reference to
    /// that image). `in_use` maps image digests to the containers that use them: the
    /// last reference of an image in use is refused with an error naming them, as
    /// `docker rmi` refuses. When the last reference goes, the image record goes too;
    /// its blobs and layers are deleted by the next [`ImageStore::prune`].
    pub fn remove(
        &self,
        reference: &str,
        in_use: &HashMap<String, Vec<String>>,
    ) -> Result<(), ImageError> {
        let _lock = self.exclusive_lock()?;
        let refs = self.all_refs()?;
        let (digest, targets): (String, Vec<String>) = if is_bare_digest(reference) {
            let targets = refs
                .iter()
                .filter(|r| r.digest == reference)
                .map(|r| r.reference.clone())
                .collect();
            (reference.to_string(), targets)
        } else {
            let norm = normalize_reference(reference)?;
            match refs.iter().find(|r| r.reference == norm) {
                Some(r) => (r.digest.clone(), vec![norm]),
                None => {
                    return Err(ImageError::NotFound {
                        reference: reference.to_string(),
                    })
                }
            }
        };
        let record_path = self.record_path(&digest);
        if targets.is_empty() && !record_path.exists() {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        }
        let remaining = refs
            .iter()
            .filter(|r| r.digest == digest && !targets.contains(&r.reference))
            .count();
        if remaining == 0 {
            if let Some(users) = in_use.get(&digest) {
                return Err(ImageError::ImageInUse {
                    reference: reference.to_string(),
                    digest,
                    users: describe_users(users),
                });
            }
        }
        // References first, then the record: the reverse of the write order, so a crash
        // leaves at worst a record without references, which prune collects.
        for t in &targets {
            remove_file_durably(&self.ref_path(t))?;
        }
        if remaining == 0 {
            remove_file_durably(&record_path)?;
            remove_file_durably(&self.used_path(&digest))?;
        }
        Ok(())
    }

    /// Records that a container uses the image `digest` now (its last-used time, which
    /// the agent's GC grace period counts from). Cheap: one small file's mtime. Best
    /// effort: a failure is logged, never fatal to creating the container.
    pub fn mark_used(&self, digest: &str) {
        if validate_digest(digest).is_err() {
            tracing::warn!(%digest, "mark_used: not a sha256 digest");
            return;
        }
        let path = self.used_path(digest);
        let result = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot record image use");
        }
    }

    /// When a container last used `digest` (see [`ImageStore::mark_used`]).
    pub fn last_used(&self, digest: &str) -> Option<SystemTime> {
        fs::metadata(self.used_path(digest))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The digest `reference` names locally, if any: a bare `sha256:…`, a pinned
    /// reference (whose record must exist) or a reference record.
    pub(crate) fn resolve_local(&self, reference: &str) -> Result<Option<String>, ImageError> {
        let digest = if is_bare_digest(reference) {
            reference.to_string()
        } else {
            let norm = normalize_reference(reference)?;
            match pinned_digest(&norm) {
                Some(d) => d.to_string(),
                None => match read_record::<RefRecord>(&self.ref_path(&norm))? {
                    Some(r) => r.digest,
                    None => return Ok(None),
                },
            }
        };
        Ok(self.record_path(&digest).is_file().then_some(digest))
    }

    pub(crate) fn write_ref(&self, normalised: &str, digest: &str) -> Result<(), ImageError> {
        let path = self.ref_path(normalised);
        let r = RefRecord {
            reference: normalised.to_string(),
            digest: digest.to_string(),
        };
        crate::state::write_json(&path, &r)
            .map_err(|source| ImageError::WriteRecord { path, source })
    }

    pub(crate) fn used_path(&self, digest: &str) -> std::path::PathBuf {
        self.root().join("used").join(digest_hex(digest))
    }

    /// Every reference record. A corrupt one is an error rather than skipped: GC must
    /// not collect an image because it could not read what names it.
    pub(crate) fn all_refs(&self) -> Result<Vec<RefRecord>, ImageError> {
        json_files(&self.root().join("refs"))?
            .iter()
            .filter_map(|p| read_record::<RefRecord>(p).transpose())
            .collect()
    }

    /// Every image record, keyed by digest.
    pub(crate) fn all_records(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut by_digest = BTreeMap::new();
        for p in json_files(&self.root().join("records"))? {
            if let Some(r) = read_record::<ImageRecord>(&p)? {
                by_digest.insert(r.digest.clone(), r);
            }
        }
        Ok(by_digest.into_values().collect())
    }

    fn created(&self, record: &ImageRecord) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Created {
            created: Option<String>,
        }
        let bytes = self.content().read(&record.config_digest).ok()?;
        serde_json::from_slice::<Created>(&bytes).ok()?.created
    }
}

pub(crate) fn is_bare_digest(s: &str) -> bool {
    s.starts_with("sha256:") && validate_digest(s).is_ok()
}

fn describe_users(users: &[String]) -> String {
    if users.is_empty() {
        "a container".to_string()
    } else {
        format!("container(s) {}", users.join(", "))
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `*.json` files of `dir`, skipping the dot-named temp files of in-flight atomic writes.
fn json_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, ImageError> {
    let rd = fs::read_dir(dir).map_err(|source| ImageError::ReadRecord {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| ImageError::ReadRecord {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name.ends_with(".json") {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a file ("not found" is success) and syncs its directory so the removal
/// survives a crash.
pub(crate) fn remove_file_durably(path: &Path) -> Result<(), ImageError> {
    let err = |source| ImageError::RemoveContent {
        path: path.to_path_buf(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}
