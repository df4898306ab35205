//! The registry client: resolve a reference to a manifest, fetch missing blobs into the
//! content store, unpack new layers, record the image.
//!
//! Order of a pull:
//!
//! 1. pick the endpoint: for `docker.io`, each `--registry-mirror` in order, then Docker
//!    Hub (dockerd's `lookupPullEndpoints`); the first that serves the manifest also
//!    serves the blobs, so one pull never mixes content from two sources;
//! 2. credentials for that endpoint from the Docker config (see `auth`), read on every
//!    pull so a `docker login` takes effect without restarting the agent;
//! 3. manifest (and the platform's manifest of an index), verified against any pinned
//!    digest, then the config blob;
//! 4. layers: up to [`PARALLEL_DOWNLOADS`] downloads and `PARALLEL_UNPACKS` unpacks at
//!    once; a layer is streamed into the content store and its unpacker at the same
//!    time when an unpack slot is free, else downloaded first (`layer`); a chain-id
//!    directory holds only its own layer's diff, so layers unpack in any order;
//! 5. the image record, last.
//!
//! Every registry request is retried on transient failures (`retry`). Each blob and
//! each layer is fetched or unpacked by one task at a time across tasks and processes
//! (`ContentStore::lock`); the others wait and then find it present.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;

use super::auth::{self, Credentials};
use super::config::{
    self, chain_ids, host_platform, parse_config, parse_manifest, Descriptor, Manifest,
};
use super::content::{digest_hex, sha256_digest};
use super::progress::{Progress, ProgressEvent};
use super::reference::{normalize_reference, pinned_digest};
use super::retry::{classify, Backoff, Class};
use super::store::{ImageRecord, ImageStore, LayerRecord};
use super::{Image, ImageError};

mod layer;
mod manifest_get;
mod registry;

pub use manifest_get::MAX_MANIFEST_BYTES;

pub(crate) use registry::push_client;
pub use registry::RegistryConfig;
use registry::{client_with, Endpoint};

/// Layer downloads in flight per pull (Docker's `max-concurrent-downloads` default).
pub const PARALLEL_DOWNLOADS: usize = 3;
/// Layer unpacks at once per pull: unpacking is CPU bound and the machines have two
/// cores. A download that finds an unpack slot free streams into its unpacker; the
/// others go to a file first and are unpacked from it when a slot frees (see `layer`).
const PARALLEL_UNPACKS: usize = 2;
/// How long a wait for the next bytes of any answer (a manifest, a blob, an error
/// body) may take by default: the read-idle timeout of every body. A stalled download
/// fails after it and is retried once with backoff (`Ctx::retrying`); an agent's pull
/// is then retried by the reconciler's own backoff. (It is not a limit on a whole
/// download, which may take as long as it keeps moving.)
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_TIMEOUT: Duration = BODY_IDLE_TIMEOUT;
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest image config wharf reads. Real ones are a few KiB (history included);
/// containerd reads configs whole too, and 8 MiB leaves room for odd ones.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Bytes between two progress events of one layer.
const PROGRESS_STEP: u64 = 256 * 1024;

/// What one pull transferred and unpacked; all zero when everything was present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Blobs (configs and layers) downloaded; manifests are always fetched and not counted.
    pub blobs_fetched: usize,
    /// Bytes of those blobs.
    pub bytes_fetched: u64,
    /// Layers unpacked now (not found already unpacked).
    pub layers_unpacked: usize,
}
/// What every request of one pull needs; shared by the layer tasks.
struct Ctx {
    client: oci_client::Client,
    /// Our own requests (manifests, bounded; see `manifest_get`).
    http: reqwest::Client,
    /// Registries reached over plain HTTP.
    plain_http: Vec<String>,
    endpoint: Endpoint,
    /// The normalised reference the user asked for, for messages.
    normalised: String,
    config_path: Option<PathBuf>,
    anonymous: bool,
    timeout: Duration,
    backoff: Backoff,
    progress: Progress,
}

/// A failed try: the registry's doing (maybe transient) or ours (never retried).
enum TryError {
    Registry(OciDistributionError),
    Local(ImageError),
}

impl From<ImageError> for TryError {
    fn from(e: ImageError) -> Self {
        Self::Local(e)
    }
}

impl From<OciDistributionError> for TryError {
    fn from(e: OciDistributionError) -> Self {
        Self::Registry(e)
    }
}

/// What a registry operation was fetching, for error messages.
enum Op<'a> {
    Manifest,
    Blob(&'a str),
}

impl Ctx {
    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent. A
    /// timeout is retried only once: a registry that was slow is likely slow again, and
    /// each try already cost the whole timeout.
    async fn retrying<T, F, Fut>(&self, what: &str, op: Op<'_>, mut f: F) -> Result<T, ImageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TryError>>,
    {
        let mut attempt = 1;
        loop {
            let err = match f().await {
                Ok(v) => return Ok(v),
                Err(TryError::Local(e)) => return Err(e),
                Err(TryError::Registry(e)) => e,
            };
            let class = classify(&err);
            let budget = match class {
                Class::Timeout => self.backoff.attempts.min(2),
                _ => self.backoff.attempts,
            };
            if !class.is_transient() || attempt >= budget {
                return Err(self.registry_error(err, class, attempt, op));
            }
            let delay = self.backoff.delay_with_jitter(attempt);
            tracing::warn!(
                reference = %self.normalised, %what, attempt, error = %err,
                "registry request failed, retrying in {delay:?}"
            );
            self.progress.send(ProgressEvent::Retrying {
                what: what.to_string(),
                attempt,
                delay,
                error: err.to_string(),
            });
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Turns a final registry failure into an error that says what to do.
    fn registry_error(
        &self,
        source: OciDistributionError,
        class: Class,
        attempts: u32,
        op: Op<'_>,
    ) -> ImageError {
        let reference = self.normalised.clone();
        let registry = self.endpoint.host.clone();
        let config = self.config_path.as_ref().map_or_else(
            || "~/.docker/config.json".to_string(),
            |p| p.display().to_string(),
        );
        match class {
            Class::Unauthorized | Class::Denied => {
                let reason = if class == Class::Unauthorized {
                    "401 unauthorized"
                } else {
                    "403 denied"
                };
                let hint = if self.anonymous {
                    format!("no credentials for {registry} in {config}; add them there (e.g. `docker login {registry}`)")
                } else {
                    format!("check credentials for {registry} in {config}")
                };
                ImageError::RegistryAccess {
                    reference,
                    registry,
                    reason: reason.to_string(),
                    hint,
                }
            }
            Class::NotFound => ImageError::RegistryNotFound {
                reference,
                registry,
                what: match op {
                    Op::Manifest => "manifest".to_string(),
                    Op::Blob(d) => format!("blob {d}"),
                },
            },
            Class::Timeout => ImageError::RegistryTimeout {
                reference,
                registry,
                timeout: self.timeout,
                attempts,
            },
            Class::Transient | Class::Fatal => match op {
                Op::Manifest => ImageError::FetchManifest { reference, source },
                Op::Blob(d) => ImageError::FetchBlob {
                    reference,
                    digest: d.to_string(),
                    source,
                },
            },
        }
    }
}

impl ImageStore {
    /// [`ImageStore::pull_with_stats`], sending per-layer [`ProgressEvent`]s to
    /// `progress` (render them with [`super::progress::render_terminal`]). The channel
    /// closes when the pull is over and the sender is dropped.
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        progress: Option<UnboundedSender<ProgressEvent>>,
    ) -> Result<(Image, PullStats), ImageError> {
        let normalised = normalize_reference(reference)?;
        pull_reporting(self, &normalised, Progress::new(progress)).await
    }
}

/// Pulls the normalised reference `normalised` into `store`.
pub(crate) async fn pull(
    store: &ImageStore,
    normalised: &str,
) -> Result<(Image, PullStats), ImageError> {
    pull_reporting(store, normalised, Progress::default()).await
}

async fn pull_reporting(
    store: &ImageStore,
    normalised: &str,
    progress: Progress,
) -> Result<(Image, PullStats), ImageError> {
    // The store lock, shared, for the whole pull: from before the first blob is reused
    // or written until the references are recorded, so a concurrent prune (exclusive)
    // can never delete what this pull has decided to reuse (see lock.rs).
    let locker = store.clone();
    let _lock = tokio::task::spawn_blocking(move || locker.shared_lock())
        .await
        .map_err(|e| ImageError::Task {
            reference: normalised.to_string(),
            reason: e.to_string(),
        })??;
    pull_locked(store, normalised, progress).await
}

async fn pull_locked(
    store: &ImageStore,
    normalised: &str,
    progress: Progress,
) -> Result<(Image, PullStats), ImageError> {
    let reference: Reference =
        normalised
            .parse()
            .map_err(|e: oci_client::ParseError| ImageError::ParseReference {
                reference: normalised.to_string(),
                reason: e.to_string(),
            })?;
    let inner = store.inner();
    let registry = &inner.registry;
    let plain_http = registry.plain_http_hosts()?;
    let client = client_with(plain_http.clone(), registry.timeout);
    let http = registry::http_client(registry.timeout).map_err(|e| ImageError::Task {
        reference: normalised.to_string(),
        reason: format!("build the HTTP client: {e}"),
    })?;
    let config_path = auth::docker_config_path(registry.docker_config.as_deref());

    // 1. The first endpoint that serves the manifest. Any failure of a mirror falls
    //    through to the next source, as dockerd does; Docker Hub's own failure is final.
    let endpoints = registry.endpoints(&reference)?;
    let mut resolved = None;
    for endpoint in endpoints {
        let creds = auth::credentials_for(
            &endpoint.host,
            config_path.as_deref(),
            registry.credential_helper_dir.as_deref(),
        )
        .await?;
        let ctx = Ctx {
            client: client.clone(),
            http: http.clone(),
            plain_http: plain_http.clone(),
            endpoint: endpoint.clone(),
            normalised: normalised.to_string(),
            config_path: config_path.clone(),
            anonymous: creds == Credentials::Anonymous,
            timeout: registry.timeout.unwrap_or(DEFAULT_TIMEOUT),
            // A mirror gets one retry: Docker Hub is the fallback, and a dead mirror
            // must not delay every pull by the whole backoff.
            backoff: if endpoint.mirror {
                Backoff {
                    attempts: 2,
                    ..Backoff::default()
                }
            } else {
                Backoff::default()
            },
            progress: progress.clone(),
        };
        let auth = creds.to_registry_auth();
        let top_ref = endpoint.reference.clone();
        match fetch_manifest(&ctx, &auth, &top_ref, pinned_digest(normalised)).await {
            Ok(top) => {
                resolved = Some((ctx, auth, top));
                break;
            }
            Err(e) if endpoint.mirror => {
                tracing::warn!(reference = %normalised, mirror = %endpoint.host, error = %e, "mirror failed, trying the next source");
            }
            Err(e) => return Err(e),
        }
    }
    let Some((ctx, auth, (top_digest, top_bytes))) = resolved else {
        // Unreachable: the last endpoint is the registry itself, whose error returns.
        return Err(ImageError::Task {
            reference: normalised.to_string(),
            reason: "no registry endpoint".into(),
        });
    };
    let ctx = Arc::new(ctx);

    inner.content.write_bytes(&top_digest, &top_bytes).await?;
    let (manifest_digest, config_desc, layers) = match parse_manifest(normalised, &top_bytes)? {
        Manifest::Image { config, layers } => (top_digest.clone(), config, layers),
        Manifest::Index(entries) => {
            let want = host_platform();
            let entry = config::select_platform(&entries, &want).ok_or_else(|| {
                ImageError::SelectPlatform {
                    reference: normalised.to_string(),
                    platform: match &want.variant {
                        Some(v) => format!("{}/{}/{v}", want.os, want.architecture),
                        None => format!("{}/{}", want.os, want.architecture),
                    },
                }
            })?;
            let child = ctx
                .endpoint
                .reference
                .clone_with_digest(entry.digest.clone());
            let (digest, bytes) = fetch_manifest(&ctx, &auth, &child, Some(&entry.digest)).await?;
            inner.content.write_bytes(&digest, &bytes).await?;
            match parse_manifest(normalised, &bytes)? {
                Manifest::Image { config, layers } => (digest, config, layers),
                Manifest::Index(_) => {
                    return Err(ImageError::ParseManifest {
                        reference: normalised.to_string(),
                        reason: "an index entry for our platform is another index".into(),
                    })
                }
            }
        }
    };
    progress.send(ProgressEvent::Resolved {
        reference: normalised.to_string(),
        digest: top_digest.clone(),
        layers: layers.len(),
    });

    // 2. The config names the uncompressed layers (diff ids), hence the unpacked dirs.
    //    Its size comes from the manifest: refused before anything is fetched if it is
    //    more than a config can sensibly be (the writer then holds the registry to it).
    if config_desc.size > MAX_CONFIG_BYTES {
        return Err(ImageError::TooLarge {
            reference: normalised.to_string(),
            what: "the image config",
            size: config_desc.size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let mut stats = PullStats::default();
    if let Some(n) = fetch_blob(&ctx, store, &config_desc).await? {
        stats.blobs_fetched += 1;
        stats.bytes_fetched += n;
    }
    let config_bytes = inner.content.read(&config_desc.digest)?;
    let parsed = parse_config(normalised, &config_desc.digest, &config_bytes)?;
    if parsed.diff_ids.len() != layers.len() {
        return Err(ImageError::ParseConfig {
            reference: normalised.to_string(),
            digest: config_desc.digest.clone(),
            reason: format!(
                "{} diff ids for {} layers",
                parsed.diff_ids.len(),
                layers.len()
            ),
        });
    }
    let chains = chain_ids(&parsed.diff_ids);

    // 3. Layers. One already unpacked is neither downloaded nor unpacked: the chain id
    //    covers its content and everything below it.
    let slots = layer::Slots {
        downloads: Arc::new(Semaphore::new(PARALLEL_DOWNLOADS)),
        unpacks: Arc::new(Semaphore::new(PARALLEL_UNPACKS)),
    };
    let (running, mut all_stopped) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    let mut layer_records = Vec::with_capacity(layers.len());
    for ((desc, diff_id), chain_id) in layers.iter().zip(&parsed.diff_ids).zip(&chains) {
        if !desc.media_type.is_empty() && !desc.media_type.contains("tar") {
            return Err(ImageError::UnsupportedLayer {
                reference: normalised.to_string(),
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            });
        }
        layer_records.push(LayerRecord {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
        });
        if store.layer_path(chain_id).is_dir() {
            progress.send(ProgressEvent::LayerPresent {
                digest: desc.digest.clone(),
                size: desc.size,
            });
            continue;
        }
        let (ctx, store, desc, diff_id, chain_id) = (
            ctx.clone(),
            store.clone(),
            desc.clone(),
            diff_id.clone(),
            chain_id.clone(),
        );
        let (slots, running) = (slots.clone(), running.clone());
        tasks.spawn(async move {
            layer::pull_layer(&ctx, &store, &desc, &diff_id, &chain_id, &slots, running).await
        });
    }
    // The first failure wins: the other layer tasks are aborted, and their blocking
    // unpackers (which outlive an abort) awaited, so that no temp file is left when the
    // pull returns.
    drop(running);
    while let Some(joined) = tasks.join_next().await {
        let result = joined
            .map_err(|e| ImageError::Task {
                reference: normalised.to_string(),
                reason: e.to_string(),
            })
            .and_then(|r| r);
        let (fetched, unpacked) = match result {
            Ok(v) => v,
            Err(e) => {
                tasks.shutdown().await;
                // `None` once every unpacker has dropped its sender.
                let _ = all_stopped.recv().await;
                return Err(e);
            }
        };
        if let Some(n) = fetched {
            stats.blobs_fetched += 1;
            stats.bytes_fetched += n;
        }
        if unpacked {
            stats.layers_unpacked += 1;
        }
    }

    // 4. Record last: a reference only ever names a complete image.
    let record = ImageRecord {
        digest: top_digest,
        manifest_digest,
        config_digest: config_desc.digest.clone(),
        config: parsed.config,
        layers: layer_records,
    };
    store.write_records(normalised, &record)?;
    Ok((store.image_from_record(normalised, &record), stats))
}

/// Fetches manifest bytes and returns them with their sha256, which must equal
/// `expected` when the caller pins one. We hash the bytes ourselves rather than trust
/// the registry's `Docker-Content-Digest` header.
async fn fetch_manifest(
    ctx: &Ctx,
    auth: &RegistryAuth,
    reference: &Reference,
    expected: Option<&str>,
) -> Result<(String, Vec<u8>), ImageError> {
    let what = format!("manifest of {}", ctx.normalised);
    let bytes = ctx
        .retrying(&what, Op::Manifest, || {
            manifest_get::get_manifest(ctx, auth, reference)
        })
        .await?;
    let actual = sha256_digest(&bytes);
    if let Some(expected) = expected {
        if actual != expected {
            return Err(ImageError::VerifyManifest {
                reference: ctx.normalised.clone(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok((actual, bytes))
}

/// Downloads the blob `desc` (the image config) unless the content store has it,
/// streaming it through a verifying writer. Returns the bytes downloaded, or `None`
/// when the blob was present (possibly fetched meanwhile by a concurrent pull we waited
/// for).
async fn fetch_blob(
    ctx: &Ctx,
    store: &ImageStore,
    desc: &Descriptor,
) -> Result<Option<u64>, ImageError> {
    let content = store.content();
    if content.has(&desc.digest, Some(desc.size)) {
        return Ok(None);
    }
    let _lock = content
        .lock(&format!("blob-{}", digest_hex(&desc.digest)))
        .await?;
    if content.has(&desc.digest, Some(desc.size)) {
        return Ok(None);
    }
    download_blob(ctx, store, desc, false).await.map(Some)
}

/// Downloads the blob `desc` into the content store, with retries; the caller holds
/// its lock. `layer`: send per-layer progress events.
async fn download_blob(
    ctx: &Ctx,
    store: &ImageStore,
    desc: &Descriptor,
    layer: bool,
) -> Result<u64, ImageError> {
    let oci_desc = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    tracing::debug!(reference = %ctx.normalised, digest = %desc.digest, size = desc.size, "fetching blob");
    let what = format!("blob {}", desc.digest);
    ctx.retrying(&what, Op::Blob(&desc.digest), || {
        download_once(ctx, store, desc, &oci_desc, layer)
    })
    .await
}

/// One try at downloading a blob into a fresh temp file; a failed try leaves nothing.
async fn download_once(
    ctx: &Ctx,
    store: &ImageStore,
    desc: &Descriptor,
    oci_desc: &OciDescriptor,
    layer: bool,
) -> Result<u64, TryError> {
    // Auth for this endpoint was negotiated and stored by the manifest fetch.
    let mut stream = ctx
        .client
        .pull_blob_stream(&ctx.endpoint.reference, oci_desc)
        .await?;
    let mut writer = store
        .content()
        .writer(&desc.digest, Some(desc.size))
        .await?;
    if layer {
        ctx.progress.send(ProgressEvent::LayerStarted {
            digest: desc.digest.clone(),
            total: desc.size,
        });
    }
    let mut reported = 0;
    while let Some(chunk) = stream.next().await {
        // The stream's errors are the network's (or its digest check's): classified by
        // `retry`. A failed write is ours and final.
        let chunk = chunk.map_err(OciDistributionError::IoError)?;
        writer
            .write_all(&chunk)
            .await
            .map_err(|source| ImageError::WriteBlob {
                digest: desc.digest.clone(),
                path: store.content().blob_path(&desc.digest),
                source,
            })?;
        let written = writer.written();
        if layer && (written - reported >= PROGRESS_STEP || written == desc.size) {
            reported = written;
            ctx.progress.send(ProgressEvent::LayerBytes {
                digest: desc.digest.clone(),
                current: written,
                total: desc.size,
            });
        }
    }
    let written = writer.written();
    writer.commit().await?;
    Ok(written)
}
