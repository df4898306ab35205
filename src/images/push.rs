//! `wharf push`: upload a local image to the registry its reference names.
//!
//! Order follows the distribution spec ("Pushing manifests"): every blob the manifest
//! names first, then the manifest, so the registry never holds a manifest with missing
//! content. Blobs the registry already has (a `HEAD` answers 200) are skipped. The
//! manifest goes up as the exact bytes we stored when pulling or importing — never
//! re-serialised — so its digest on the registry is the digest we report.

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

use super::auth::{credentials_for, docker_config_path};
use super::config::OCI_MANIFEST;
use super::content::sha256_digest;
use super::reference::{normalize_reference, pinned_digest};
use super::retry::{classify, Backoff};
use super::store::{read_record, ImageRecord, ImageStore};
use super::ImageError;

impl ImageStore {
    /// Pushes the local image `reference` to the registry and repository it names and
    /// returns the manifest digest (`sha256:…`). Tag an image first (`tag`) to push it
    /// under another name. For a multi-platform image only the platform manifest we
    /// pulled exists locally, so that manifest is pushed and its digest returned.
    ///
    /// Credentials come from the Docker config file of the store's registry settings;
    /// insecure registries are reached over plain HTTP.
    pub async fn push(&self, reference: &str) -> Result<String, ImageError> {
        let normalised = normalize_reference(reference)?;
        if pinned_digest(&normalised).is_some() {
            return Err(ImageError::ParseReference {
                reference: reference.to_string(),
                reason: "push needs a tag, not a digest".into(),
            });
        }
        let store = self.clone();
        let _lock = tokio::task::spawn_blocking(move || store.shared_lock())
            .await
            .map_err(|e| ImageError::Task {
                reference: normalised.clone(),
                reason: e.to_string(),
            })??;

        let digest = self
            .resolve_local(&normalised)?
            .ok_or_else(|| ImageError::NotFound {
                reference: normalised.clone(),
            })?;
        let record = read_record::<ImageRecord>(&self.record_path(&digest))?.ok_or_else(|| {
            ImageError::NotFound {
                reference: normalised.clone(),
            }
        })?;
        let content = self.content();
        let manifest = content.read(&record.manifest_digest)?;
        let mut blobs = vec![(record.config_digest.clone(), "config")];
        for l in &record.layers {
            if !blobs.iter().any(|(d, _)| d == &l.digest) {
                blobs.push((l.digest.clone(), "layer"));
            }
        }
        // Refuse before uploading anything: a partial push is just wasted bandwidth.
        if let Some((missing, _)) = blobs.iter().find(|(d, _)| !content.has(d, None)) {
            return Err(ImageError::MissingBlob {
                reference: normalised.clone(),
                digest: missing.clone(),
            });
        }

        let target: Reference =
            normalised
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::ParseReference {
                    reference: normalised.clone(),
                    reason: e.to_string(),
                })?;
        let registry = &self.inner().registry;
        let client = super::pull::push_client(registry.insecure.clone());
        let config_path = docker_config_path(registry.docker_config.as_deref());
        let auth: RegistryAuth = credentials_for(
            target.registry(),
            config_path.as_deref(),
            registry.credential_helper_dir.as_deref(),
        )
        .await?
        .to_registry_auth();
        let fail = |what: &'static str, digest: &str| {
            let (reference, digest) = (normalised.clone(), digest.to_string());
            move |source| ImageError::Push {
                reference,
                what,
                digest,
                source,
            }
        };
        retrying("authenticate", || {
            client.auth(&target, &auth, RegistryOperation::Push)
        })
        .await
        .map_err(fail("authenticate for", ""))?;

        for (digest, what) in &blobs {
            if retrying(what, || client.blob_exists(&target, digest))
                .await
                .map_err(fail(what, digest))?
            {
                tracing::debug!(%digest, "registry has the blob already");
                continue;
            }
            let path = content.blob_path(digest);
            let size = std::fs::metadata(&path)
                .map_err(|source| ImageError::ReadBlob {
                    path: path.clone(),
                    source,
                })?
                .len();
            tracing::debug!(%digest, size, "uploading blob");
            // Streamed from the file (a fresh stream per try): memory stays flat
            // whatever the layer's size.
            retrying(what, || async {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(OciDistributionError::IoError)?;
                client
                    .push_blob_stream(&target, file_stream(file), digest, Some(size))
                    .await
            })
            .await
            .map_err(fail(what, digest))?;
        }

        let media_type = manifest_media_type(&manifest);
        let content_type = reqwest::header::HeaderValue::from_str(&media_type).map_err(|e| {
            ImageError::ParseManifest {
                reference: normalised.clone(),
                reason: format!("media type {media_type:?}: {e}"),
            }
        })?;
        let manifest_digest = sha256_digest(&manifest);
        retrying("manifest", || {
            client.push_manifest_raw(&target, manifest.clone(), content_type.clone())
        })
        .await
        .map_err(fail("manifest", &manifest_digest))?;
        tracing::info!(reference = %normalised, digest = %manifest_digest, "pushed");
        Ok(manifest_digest)
    }
}

/// Runs a registry request until it succeeds, fails for good, or the retry budget is
/// spent: transient failures (5xx, 429, connection errors, timeouts) are retried with the
/// pull's backoff.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let backoff = Backoff::default();
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if classify(&e).is_transient() && attempt < backoff.attempts => {
                let delay = backoff.delay_with_jitter(attempt);
                tracing::warn!(%what, attempt, error = %e, "push request failed, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The file's content as a stream of 256 KiB chunks; ends at the first error.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
        }
    })
}

/// The manifest's own `mediaType`; OCI manifests may omit it (image-spec says it
/// SHOULD be set), and then it is an OCI image manifest.
fn manifest_media_type(manifest: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        media_type: Option<String>,
    }
    serde_json::from_slice::<Doc>(manifest)
        .ok()
        .and_then(|d| d.media_type)
        .unwrap_or_else(|| OCI_MANIFEST.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_comes_from_the_manifest_and_defaults_to_oci() {
        assert_eq!(
            manifest_media_type(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(manifest_media_type(br#"{"schemaVersion":2}"#), OCI_MANIFEST);
    }

    #[tokio::test]
    async fn pushing_an_image_that_is_not_local_fails_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), vec![]).unwrap();
        let err = store.push("127.0.0.1:1/nothing:here").await.unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
        let err = store
            .push(&format!("127.0.0.1:1/x@sha256:{}", "a".repeat(64)))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::ParseReference { .. }), "{err}");
    }
}
