//! The GET of a manifest or an index, with its body bounded.
//!
//! oci-client's `pull_manifest_raw` reads the whole body, whatever its size: a registry
//! that answered with a 200 MB "manifest" took the agent from 63 to 570 MB, and again at
//! every retry. Manifests are small (containerd refuses more than 4 MiB), so the request
//! is ours: the length announced in `Content-Length` is checked before reading, and a
//! body that runs past the limit anyway is cut there. Authentication is still
//! negotiated by oci-client, which keeps the token for the blob requests that follow.

use futures_util::StreamExt as _;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header;

use super::super::ImageError;
use super::{Ctx, TryError};
use crate::images::config::ACCEPTED_MANIFESTS;

/// The largest manifest or index wharf reads, as containerd's limit.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The longest one manifest request may take, whole: the idle timeout alone lets a
/// registry that sends a byte every 29 s hold a pull for days.
pub const MANIFEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The body of the manifest `reference` names, at most [`MAX_MANIFEST_BYTES`], within
/// [`MANIFEST_DEADLINE`].
pub(super) async fn get_manifest(
    ctx: &Ctx,
    auth: &RegistryAuth,
    reference: &Reference,
) -> Result<Vec<u8>, TryError> {
    match tokio::time::timeout(MANIFEST_DEADLINE, get_manifest_once(ctx, auth, reference)).await {
        Ok(result) => result,
        Err(_) => Err(TryError::Local(ImageError::Task {
            reference: ctx.normalised.clone(),
            reason: format!(
                "the manifest from {} did not arrive within {}s; the registry is too slow or stalling",
                ctx.endpoint.host,
                MANIFEST_DEADLINE.as_secs()
            ),
        })),
    }
}

async fn get_manifest_once(
    ctx: &Ctx,
    auth: &RegistryAuth,
    reference: &Reference,
) -> Result<Vec<u8>, TryError> {
    let token = ctx
        .client
        .auth(reference, auth, RegistryOperation::Pull)
        .await?;
    let registry = reference.resolve_registry();
    let scheme = if ctx.plain_http.iter().any(|h| h == registry) {
        "http"
    } else {
        "https"
    };
    let target = reference.digest().or(reference.tag()).unwrap_or("latest");
    let ns = reference
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default();
    let url = format!(
        "{scheme}://{registry}/v2/{}/manifests/{target}{ns}",
        reference.repository()
    );
    let mut request = ctx
        .http
        .get(&url)
        .header(header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
    request = match (token, auth) {
        (Some(token), _) => request.bearer_auth(token),
        (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
        (None, _) => request,
    };
    let response = request.send().await.map_err(OciDistributionError::from)?;
    let status = response.status();
    if !status.is_success() {
        // The error body is read only for its first few KiB (an error envelope).
        let body = bounded_body(response, 16 << 10, &url)
            .await
            .unwrap_or_default();
        return Err(TryError::Registry(status_error(status, &body, &url)));
    }
    let too_large = |size: u64| {
        TryError::Local(ImageError::TooLarge {
            reference: ctx.normalised.clone(),
            what: "the manifest",
            size,
            limit: MAX_MANIFEST_BYTES,
        })
    };
    if let Some(size) = response
        .content_length()
        .filter(|n| *n > MAX_MANIFEST_BYTES)
    {
        return Err(too_large(size));
    }
    match bounded_body(response, MAX_MANIFEST_BYTES, &url).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge(seen)) => Err(too_large(seen)),
        Err(BodyError::Read(e)) => Err(TryError::Registry(e.into())),
    }
}

enum BodyError {
    /// More than the limit came: how much had come when reading stopped.
    TooLarge(u64),
    Read(reqwest::Error),
}

/// Reads at most `limit` bytes of `response`'s body.
async fn bounded_body(
    response: reqwest::Response,
    limit: u64,
    url: &str,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        let seen = body.len() as u64 + chunk.len() as u64;
        if seen > limit {
            tracing::debug!(%url, seen, limit, "body over its limit; stopped reading");
            return Err(BodyError::TooLarge(seen));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error oci-client would give for a failed status, so that the retry policy
/// (`retry::classify`) treats our request exactly as its own.
fn status_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError {
            url: url.to_string(),
        };
    }
    if status.is_client_error() {
        if let Ok(envelope) = serde_json::from_slice(body) {
            return OciDistributionError::RegistryError {
                envelope,
                url: url.to_string(),
            };
        }
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_string(),
        message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}
