//! Where and how to reach registries: the registry flags, Docker Hub mirrors (dockerd's
//! `lookupPullEndpoints` order) and the HTTP client.

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Reference;

use super::super::ImageError;
use super::{CONNECT_TIMEOUT, DEFAULT_TIMEOUT};

/// How to reach registries: the agent's and the image commands' registry flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`) reached over plain HTTP (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// Mirrors of Docker Hub (`--registry-mirror`, e.g. `https://mirror.example` or
    /// `http://127.0.0.1:5000`), tried in order before Docker Hub itself. A mirror given
    /// with `http://` is reached over plain HTTP.
    pub mirrors: Vec<String>,
    /// The Docker config file with credentials; `None`: `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Connect timeout and longest wait for the next bytes of an answer (not a limit on
    /// a whole download). `None`: [`super::BODY_IDLE_TIMEOUT`] (30 s).
    pub timeout: Option<Duration>,
    /// The most a layer may unpack to (the sum of its files' sizes); `None`:
    /// [`crate::images::DEFAULT_MAX_LAYER_BYTES`]. A layer over it fails the pull.
    pub max_layer_bytes: Option<u64>,
    /// A directory searched for `docker-credential-<name>` helpers before `$PATH`.
    /// `None`: `$PATH` only, as Docker does. Lets a caller (or a test, which cannot
    /// change the process-wide `PATH` under parallel threads) supply its own helpers.
    pub credential_helper_dir: Option<PathBuf>,
}

/// A mirror URL reduced to what the client needs: the host and whether it is plain HTTP.
/// Like dockerd's `ValidateMirror`, a path, query or credentials in the URL are refused:
/// the registry API lives at `/v2/` of the host.
pub(crate) fn parse_mirror(url: &str) -> Result<(String, bool), ImageError> {
    let fail = |reason: &str| ImageError::InvalidMirror {
        mirror: url.to_string(),
        reason: reason.to_string(),
    };
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if url.contains("://") {
        return Err(fail("the scheme must be http or https"));
    } else {
        (false, url)
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return Err(fail("no host"));
    }
    if host.contains(['/', '?', '#', '@']) {
        return Err(fail(
            "only scheme://host[:port] is allowed (no path, query or user)",
        ));
    }
    Ok((host.to_ascii_lowercase(), plain_http))
}

impl RegistryConfig {
    /// Hosts reached over plain HTTP: the insecure registries and `http://` mirrors.
    pub(super) fn plain_http_hosts(&self) -> Result<Vec<String>, ImageError> {
        let mut hosts = self.insecure.clone();
        for m in &self.mirrors {
            let (host, plain) = parse_mirror(m)?;
            if plain && !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// Where to pull `reference` from, in order of preference.
    pub(super) fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, ImageError> {
        let mut out = Vec::new();
        if reference.registry() == "docker.io" {
            for m in &self.mirrors {
                let (host, _) = parse_mirror(m)?;
                let mut r = reference.clone();
                r.set_mirror_registry(host.clone());
                out.push(Endpoint {
                    reference: r,
                    host,
                    mirror: true,
                });
            }
        }
        out.push(Endpoint {
            reference: reference.clone(),
            host: reference.registry().to_string(),
            mirror: false,
        });
        Ok(out)
    }
}

/// A client for pushing: blobs go up in one streamed `PUT` (the distribution spec's
/// monolithic upload, which every registry takes), never held in memory whole.
pub(crate) fn push_client(insecure: Vec<String>) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        use_monolithic_push: true,
        ..config(insecure, None)
    })
}

/// A client that speaks plain HTTP to `plain_http` registries and HTTPS (rustls, ring) to
/// every other one.
pub(super) fn client_with(
    plain_http: Vec<String>,
    timeout: Option<Duration>,
) -> oci_client::Client {
    oci_client::Client::new(config(plain_http, timeout))
}

fn config(plain_http: Vec<String>, timeout: Option<Duration>) -> ClientConfig {
    // reqwest's rustls needs a process-wide crypto provider; we build without aws-lc
    // (see pitfalls.md). Another part of wharf may have installed it first: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http),
        // We resolve indexes ourselves (see `resolve`), so never let the client pick.
        platform_resolver: None,
        connect_timeout: Some(timeout.unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT)),
        read_timeout: Some(timeout.unwrap_or(DEFAULT_TIMEOUT)),
        user_agent: concat!("wharf/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
}

/// The plain HTTP client for the requests wharf makes itself (bounded manifest GETs),
/// with the timeouts of [`client_with`]'s.
pub(super) fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(timeout.unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT))
        .read_timeout(timeout.unwrap_or(DEFAULT_TIMEOUT))
        .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One place to pull from: a mirror (the reference carries the mirror host) or the
/// reference's own registry.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) reference: Reference,
    /// The host credentials are looked up for and errors name.
    pub(super) host: String,
    pub(super) mirror: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_are_reduced_to_host_and_scheme() {
        assert_eq!(
            parse_mirror("https://mirror.example/").unwrap(),
            ("mirror.example".to_string(), false)
        );
        assert_eq!(
            parse_mirror("http://127.0.0.1:5000").unwrap(),
            ("127.0.0.1:5000".to_string(), true)
        );
        assert!(parse_mirror("https://mirror.example/v2/").is_err());
        assert!(parse_mirror("ftp://mirror.example").is_err());
        assert!(parse_mirror("https://").is_err());
    }

    #[test]
    fn docker_hub_references_go_through_mirrors_first_and_others_do_not() {
        let cfg = RegistryConfig {
            mirrors: vec!["http://m1:5000".into(), "https://m2".into()],
            ..Default::default()
        };
        let hub: Reference = "docker.io/library/busybox:latest".parse().unwrap();
        let eps = cfg.endpoints(&hub).unwrap();
        let hosts: Vec<_> = eps
            .iter()
            .map(|e| (e.reference.resolve_registry().to_string(), e.mirror))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("m1:5000".to_string(), true),
                ("m2".to_string(), true),
                ("index.docker.io".to_string(), false)
            ]
        );
        assert_eq!(eps[2].host, "docker.io");
        let other: Reference = "quay.io/a/b:1".parse().unwrap();
        assert_eq!(cfg.endpoints(&other).unwrap().len(), 1);
        assert_eq!(cfg.plain_http_hosts().unwrap(), vec!["m1:5000".to_string()]);
    }
}
