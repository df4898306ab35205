//! The registry client: resolve a reference to a manifest, fetch missing blobs into the
//! content store, unpack new layers, record the image.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use super::config::{
    self, chain_ids, host_platform, parse_config, parse_manifest, Descriptor, Manifest,
};
use super::content::sha256_digest;
use super::reference::pinned_digest;
use super::store::{ImageRecord, ImageStore, LayerRecord};
use super::{Image, ImageError};

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

/// A client that speaks plain HTTP to `insecure` registries and HTTPS (rustls, ring) to
/// every other one.
pub(crate) fn new_client(insecure: Vec<String>) -> oci_client::Client {
    // reqwest's rustls needs a process-wide crypto provider; we build without aws-lc
    // (see pitfalls.md). Another part of wharf may have installed it first: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        // We resolve indexes ourselves (see `resolve`), so never let the client pick.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(300)),
        ..Default::default()
    })
}

/// Pulls the normalised reference `normalised` into `store`.
pub(crate) async fn pull(
    store: &ImageStore,
    normalised: &str,
) -> Result<(Image, PullStats), ImageError> {
    let reference: Reference =
        normalised
            .parse()
            .map_err(|e: oci_client::ParseError| ImageError::ParseReference {
                reference: normalised.to_string(),
                reason: e.to_string(),
            })?;
    let inner = store.inner();
    let mut stats = PullStats::default();

    // 1. Resolve the reference to a platform manifest, verifying every digest we rely on.
    let (top_digest, top_bytes) = fetch_manifest(
        &inner.client,
        &reference,
        normalised,
        pinned_digest(normalised),
    )
    .await?;
    inner.content.write_bytes(&top_digest, &top_bytes).await?;
    let (manifest_digest, config_desc, layers) = match parse_manifest(normalised, &top_bytes)? {
        Manifest::Image { config, layers } => (top_digest.clone(), config, layers),
        Manifest::Index(entries) => {
            let want = host_platform();
            let entry = config::select_platform(&entries, &want).ok_or_else(|| {
                ImageError::SelectPlatform {
                    reference: normalised.to_string(),
                    platform: format!("{}/{}", want.os, want.architecture),
                }
            })?;
            let child = reference.clone_with_digest(entry.digest.clone());
            let (digest, bytes) =
                fetch_manifest(&inner.client, &child, normalised, Some(&entry.digest)).await?;
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

    // 2. The config names the uncompressed layers (diff ids), hence the unpacked dirs.
    fetch_blob(store, &reference, normalised, &config_desc, &mut stats).await?;
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

    // 3. Layers bottom first. One already unpacked is neither downloaded nor unpacked:
    //    the chain id covers its content and everything below it.
    let mut layer_records = Vec::with_capacity(layers.len());
    for ((desc, diff_id), chain_id) in layers.iter().zip(&parsed.diff_ids).zip(&chains) {
        if !desc.media_type.is_empty() && !desc.media_type.contains("tar") {
            return Err(ImageError::UnsupportedLayer {
                reference: normalised.to_string(),
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            });
        }
        if !store.layer_path(chain_id).is_dir() {
            fetch_blob(store, &reference, normalised, desc, &mut stats).await?;
            let (s, digest, diff, chain) = (
                store.clone(),
                desc.digest.clone(),
                diff_id.clone(),
                chain_id.clone(),
            );
            let unpacked =
                tokio::task::spawn_blocking(move || s.ensure_layer(&digest, &diff, &chain))
                    .await
                    .map_err(|e| ImageError::Task {
                        reference: normalised.to_string(),
                        reason: e.to_string(),
                    })??;
            if unpacked {
                stats.layers_unpacked += 1;
            }
        }
        layer_records.push(LayerRecord {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
        });
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
    client: &oci_client::Client,
    reference: &Reference,
    normalised: &str,
    expected: Option<&str>,
) -> Result<(String, Vec<u8>), ImageError> {
    let (bytes, _header_digest) = client
        .pull_manifest_raw(
            reference,
            &RegistryAuth::Anonymous,
            config::ACCEPTED_MANIFESTS,
        )
        .await
        .map_err(|source| ImageError::FetchManifest {
            reference: reference.whole(),
            source,
        })?;
    let actual = sha256_digest(&bytes);
    if let Some(expected) = expected {
        if actual != expected {
            return Err(ImageError::VerifyManifest {
                reference: normalised.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok((actual, bytes.to_vec()))
}

/// Downloads the blob `desc` unless the content store has it, streaming it through a
/// verifying writer.
async fn fetch_blob(
    store: &ImageStore,
    reference: &Reference,
    normalised: &str,
    desc: &Descriptor,
    stats: &mut PullStats,
) -> Result<(), ImageError> {
    let content = &store.inner().content;
    if content.has(&desc.digest, Some(desc.size)) {
        return Ok(());
    }
    let mut writer = content.writer(&desc.digest, Some(desc.size)).await?;
    let oci_desc = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    tracing::debug!(reference = %normalised, digest = %desc.digest, size = desc.size, "fetching blob");
    // Auth for this registry was negotiated and stored by the manifest fetch.
    store
        .inner()
        .client
        .pull_blob(reference, &oci_desc, &mut writer)
        .await
        .map_err(|source| ImageError::FetchBlob {
            reference: normalised.to_string(),
            digest: desc.digest.clone(),
            source,
        })?;
    let written = writer.written();
    writer.commit().await?;
    stats.blobs_fetched += 1;
    stats.bytes_fetched += written;
    Ok(())
}
