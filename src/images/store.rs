//! The image store: records of pulled images and their unpacked layers (layout in the
//! module docs of `images`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::config::ImageConfig;
use super::content::{digest_hex, sha256_digest, temp_name, ContentStore};
use super::durable::GroupSync;
use super::lock::{LockMode, StoreLock};
use super::pull::{self, PullStats};
use super::reference::{normalize_reference, pinned_digest};
use super::unpack::{unpack_layer_with, UnpackStats, DEFAULT_MAX_LAYER_BYTES};
use super::{Image, ImageError, PullPolicy};

/// `refs/<sha256(reference)>.json`: which image a reference names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefRecord {
    pub reference: String,
    pub digest: String,
}

/// `records/<digest hex>.json`: everything `lookup` needs without parsing blobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageRecord {
    /// What the reference resolved to (an index for multi-platform images).
    pub digest: String,
    /// The platform manifest (equal to `digest` for single-platform images).
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LayerRecord {
    /// The compressed blob's digest.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    /// Names the unpacked directory under `layers/`.
    pub chain_id: String,
}

/// Pulled images on disk, and the registry client that fetches them. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub root: PathBuf,
    pub content: ContentStore,
    /// Registry settings for pulls (mirrors, credentials file, timeout).
    pub registry: pull::RegistryConfig,
    /// Disk usage of unpacked layers by chain id: a layer never changes once renamed
    /// into place, so walking it once per process is enough.
    pub layer_sizes: Mutex<HashMap<String, u64>>,
    /// The `syncfs` before layers (and their blobs) get their names, shared by
    /// concurrent unpacks.
    pub sync: GroupSync,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, normally `<state>/images`.
    /// `insecure_registries` (`HOST[:PORT]`) are reached over plain HTTP.
    pub fn open(root: &Path, insecure_registries: Vec<String>) -> Result<Self, ImageError> {
        let registry = pull::RegistryConfig {
            insecure: insecure_registries,
            ..Default::default()
        };
        Self::open_with(root, registry)
    }

    /// [`ImageStore::open`] with every registry setting: insecure registries, Docker Hub
    /// mirrors, the Docker config file for credentials, the network timeout.
    pub fn open_with(root: &Path, registry: pull::RegistryConfig) -> Result<Self, ImageError> {
        for sub in ["blobs/sha256", "layers", "records", "refs", "tmp", "used"] {
            let path = root.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|source| ImageError::OpenStore { path, source })?;
        }
        let sync = GroupSync::open(root).map_err(|source| ImageError::OpenStore {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                content: ContentStore::new(root),
                registry,
                layer_sizes: Mutex::new(HashMap::new()),
                sync,
            }),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Blocks until this process holds the store lock shared: for anything that adds or
    /// reads content (pull, import, push, export, tag). Hold the guard for the whole
    /// operation. Blocking: call from `spawn_blocking` in async code.
    pub fn shared_lock(&self) -> Result<StoreLock, ImageError> {
        StoreLock::acquire(&self.inner.root, LockMode::Shared)
    }

    /// Blocks until this process holds the store lock exclusively: for removal (`image
    /// rm`, prune), which must not run beside a pull that may reuse what it deletes.
    pub fn exclusive_lock(&self) -> Result<StoreLock, ImageError> {
        StoreLock::acquire(&self.inner.root, LockMode::Exclusive)
    }

    /// The blobs of this store.
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// The image `reference` names, if it is present locally with all its layers
    /// unpacked. Never contacts a registry.
    /// A bare `sha256:…` digest names an image by its digest (how an imported image
    /// that its archive did not name is found).
    pub fn lookup(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let normalised = if super::catalog::is_bare_digest(reference) {
            reference.to_string()
        } else {
            normalize_reference(reference)?
        };
        // A pinned digest names the content itself, whatever repository it came from.
        let bare = super::catalog::is_bare_digest(&normalised).then_some(normalised.as_str());
        let digest = match bare.or_else(|| pinned_digest(&normalised)) {
            Some(d) => d.to_string(),
            None => {
                let path = self.ref_path(&normalised);
                match read_record::<RefRecord>(&path)? {
                    Some(r) => r.digest,
                    None => return Ok(None),
                }
            }
        };
        let Some(record) = read_record::<ImageRecord>(&self.record_path(&digest))? else {
            return Ok(None);
        };
        let image = self.image_from_record(&normalised, &record);
        // A layer removed behind our back (manual cleanup, a future GC) means the image
        // is not usable; report it absent so IfNotPresent pulls it again.
        if let Some(missing) = image.layers.iter().find(|l| !l.is_dir()) {
            tracing::warn!(reference = %normalised, layer = %missing.display(), "image record names a missing layer");
            return Ok(None);
        }
        Ok(Some(image))
    }

    /// Pulls `reference` from its registry: fetches what is missing, unpacks new layers
    /// and records the image.
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        self.pull_with_stats(reference)
            .await
            .map(|(image, _)| image)
    }

    /// [`ImageStore::pull`], also saying what was downloaded and unpacked.
    pub async fn pull_with_stats(&self, reference: &str) -> Result<(Image, PullStats), ImageError> {
        let normalised = normalize_reference(reference)?;
        pull::pull(self, &normalised).await
    }

    /// Makes the image present according to `policy` and returns it.
    pub async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<Image, ImageError> {
        match policy {
            PullPolicy::Always => self.pull(reference).await,
            PullPolicy::IfNotPresent => match self.lookup(reference)? {
                Some(image) => Ok(image),
                None => self.pull(reference).await,
            },
            PullPolicy::Never => self
                .lookup(reference)?
                .ok_or_else(|| ImageError::NotPresent {
                    reference: normalize_reference(reference)
                        .unwrap_or_else(|_| reference.to_string()),
                }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub(crate) fn layer_path(&self, chain_id: &str) -> PathBuf {
        self.inner.root.join("layers").join(digest_hex(chain_id))
    }

    pub(crate) fn ref_path(&self, normalised: &str) -> PathBuf {
        let key = sha256_digest(normalised.as_bytes());
        self.inner
            .root
            .join("refs")
            .join(format!("{}.json", digest_hex(&key)))
    }

    pub(crate) fn record_path(&self, digest: &str) -> PathBuf {
        self.inner
            .root
            .join("records")
            .join(format!("{}.json", digest_hex(digest)))
    }

    pub(crate) fn image_from_record(&self, normalised: &str, record: &ImageRecord) -> Image {
        Image {
            reference: normalised.to_string(),
            digest: record.digest.clone(),
            config: record.config.clone(),
            layers: record
                .layers
                .iter()
                .map(|l| self.layer_path(&l.chain_id))
                .collect(),
        }
    }

    /// Records an image, then the reference to it: in that order, so a reference never
    /// names a missing record.
    pub(crate) fn write_records(
        &self,
        normalised: &str,
        record: &ImageRecord,
    ) -> Result<(), ImageError> {
        let write = |path: PathBuf, res: std::io::Result<()>| {
            res.map_err(|source| ImageError::WriteRecord { path, source })
        };
        let path = self.record_path(&record.digest);
        write(path.clone(), crate::state::write_json(&path, record))?;
        let r = RefRecord {
            reference: normalised.to_string(),
            digest: record.digest.clone(),
        };
        let path = self.ref_path(normalised);
        write(path.clone(), crate::state::write_json(&path, &r))
    }

    /// Unpacks the layer blob `digest` as `chain_id` unless that layer exists. Returns
    /// whether it unpacked. Blocking: call from `spawn_blocking`.
    ///
    /// Unpacks into a temp directory on the same filesystem, checks the diff id, syncs,
    /// then renames: a crash never leaves a half layer under its final name, and a
    /// concurrent unpack of the same layer (agent and CLI) loses the rename harmlessly.
    pub(crate) fn ensure_layer(
        &self,
        digest: &str,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<bool, ImageError> {
        if self.layer_path(chain_id).is_dir() {
            return Ok(false);
        }
        let tmp = self.temp_layer(chain_id)?;
        let blob = self.inner.content.blob_path(digest);
        let file =
            fs::File::open(&blob).map_err(|source| ImageError::ReadBlob { path: blob, source })?;
        let stats = unpack_layer_with(file, tmp.path(), self.max_layer_bytes())?;
        check_diff_id(digest, diff_id, &stats)?;
        self.sync_layers(tmp.path())?;
        tmp.commit()
    }

    /// The cap on what one layer may unpack to.
    pub(crate) fn max_layer_bytes(&self) -> u64 {
        self.inner
            .registry
            .max_layer_bytes
            .unwrap_or(DEFAULT_MAX_LAYER_BYTES)
    }

    /// A fresh directory under `tmp/` to unpack the layer `chain_id` into.
    pub(crate) fn temp_layer(&self, chain_id: &str) -> Result<TempLayer, ImageError> {
        let path = self
            .inner
            .content
            .tmp_dir()
            .join(temp_name("layer", digest_hex(chain_id)));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| ImageError::UnpackLayer {
                path: path.clone(),
                source,
            })?;
        Ok(TempLayer {
            path,
            final_path: self.layer_path(chain_id),
            committed: false,
        })
    }

    /// Makes everything this thread wrote so far durable (one `syncfs`, shared with
    /// concurrent callers: see `durable`). `tmp` names the layer in an error.
    pub(crate) fn sync_layers(&self, tmp: &Path) -> Result<(), ImageError> {
        self.inner
            .sync
            .sync()
            .map_err(|source| ImageError::UnpackLayer {
                path: tmp.to_path_buf(),
                source,
            })
    }
}

/// The diff id the unpacker computed must be the one the image config names.
pub(crate) fn check_diff_id(
    digest: &str,
    diff_id: &str,
    stats: &UnpackStats,
) -> Result<(), ImageError> {
    if stats.diff_id != diff_id {
        return Err(ImageError::VerifyDiffId {
            digest: digest.to_string(),
            expected: diff_id.to_string(),
            actual: stats.diff_id.clone(),
        });
    }
    Ok(())
}

/// A layer being unpacked under `tmp/`; removed on drop unless committed. Its owner
/// is the only writer (the store's `tmp/` is mode 0700 and the name unique).
pub(crate) struct TempLayer {
    path: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl TempLayer {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the layer into `layers/` and syncs that directory. Returns `false` when
    /// another unpacker won the race (its layer is as good as ours). The caller has
    /// synced the content (`ImageStore::sync_layers`): a name under `layers/` must never
    /// point at files a crash could lose.
    pub(crate) fn commit(mut self) -> Result<bool, ImageError> {
        let layer_err = |path: &Path, source| ImageError::UnpackLayer {
            path: path.to_path_buf(),
            source,
        };
        match fs::rename(&self.path, &self.final_path) {
            Ok(()) => self.committed = true,
            Err(_) if self.final_path.is_dir() => return Ok(false),
            Err(e) => return Err(layer_err(&self.final_path, e)),
        }
        if let Some(parent) = self.final_path.parent() {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| layer_err(parent, e))?;
        }
        Ok(true)
    }
}

impl Drop for TempLayer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, ImageError> {
    crate::state::read_json(path).map_err(|source| ImageError::ReadRecord {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(layer_chain: &str) -> ImageRecord {
        ImageRecord {
            digest: format!("sha256:{}", "1".repeat(64)),
            manifest_digest: format!("sha256:{}", "1".repeat(64)),
            config_digest: format!("sha256:{}", "2".repeat(64)),
            config: ImageConfig {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            layers: vec![LayerRecord {
                digest: format!("sha256:{}", "3".repeat(64)),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                size: 1,
                diff_id: layer_chain.into(),
                chain_id: layer_chain.into(),
            }],
        }
    }

    #[tokio::test]
    async fn recorded_image_is_found_by_tag_and_by_digest_and_never_pulls_offline() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), vec![]).unwrap();
        let chain = format!("sha256:{}", "4".repeat(64));
        let rec = record(&chain);
        store.write_records("example.com/app:1", &rec).unwrap();
        // Layer missing: not usable.
        assert_eq!(store.lookup("example.com/app:1").unwrap(), None);
        fs::create_dir_all(store.layer_path(&chain)).unwrap();
        let img = store.lookup("example.com/app:1").unwrap().unwrap();
        assert_eq!(img.digest, rec.digest);
        assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(
            img.layers,
            vec![dir.path().join("layers").join("4".repeat(64))]
        );
        let pinned = format!("example.com/other@{}", rec.digest);
        assert_eq!(store.lookup(&pinned).unwrap().unwrap().digest, rec.digest);
        assert_eq!(store.lookup("example.com/app:2").unwrap(), None);
        let err = store
            .ensure("example.com/app:2", PullPolicy::Never)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::NotPresent { .. }), "{err}");
        let same = store
            .ensure("example.com/app:1", PullPolicy::IfNotPresent)
            .await
            .unwrap();
        assert_eq!(same, img);
    }
}
