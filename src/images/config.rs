//! The JSON documents of an image: manifests, indexes and the config blob.
//!
//! Our own minimal serde structs rather than `oci-client`'s or `oci-spec`'s: we read only
//! the fields we use and ignore the rest, so an image with an unusual but harmless field
//! (Docker v2 schema 2 and OCI differ in a few) still pulls.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::ImageError;

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What we send in `Accept` when fetching a manifest. Schema 1 is deliberately absent:
/// registries then convert or refuse, and we never have to parse it.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// The runtime defaults an image carries (the `config` object of the config blob).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
}

/// A content descriptor (the fields of the OCI descriptor we use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is decided by `mediaType` or, when a registry
/// omits it, by which of `manifests`/`layers` is present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

pub(crate) enum Manifest {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses manifest bytes; `reference` names the image in errors.
pub(crate) fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<Manifest, ImageError> {
    let fail = |reason: String| ImageError::ParseManifest {
        reference: reference.to_string(),
        reason,
    };
    let doc: ManifestDoc = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
    if doc.schema_version != Some(2) {
        return Err(fail(format!(
            "schemaVersion {:?} is not supported (want 2)",
            doc.schema_version
        )));
    }
    let is_index = match doc.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(fail(format!("unsupported media type {other}"))),
        None => doc.manifests.is_some(),
    };
    if is_index {
        let manifests = doc
            .manifests
            .ok_or_else(|| fail("index without manifests".into()))?;
        return Ok(Manifest::Index(manifests));
    }
    match (doc.config, doc.layers) {
        (Some(config), Some(layers)) => {
            for d in std::iter::once(&config).chain(&layers) {
                super::reference::validate_digest(&d.digest).map_err(fail)?;
            }
            Ok(Manifest::Image { config, layers })
        }
        _ => Err(fail("manifest without config or layers".into())),
    }
}

/// The host's platform in OCI terms (Go's GOARCH names).
pub(crate) fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.map(str::to_string),
    }
}

/// Picks the entry of an index for `want`. A missing variant on either side matches, as
/// containerd's platform matcher does for the common single-variant case.
pub(crate) fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
) -> Option<&'a Descriptor> {
    let matches = |p: &Platform, strict_variant: bool| {
        p.os == want.os
            && p.architecture == want.architecture
            && (!strict_variant || p.variant == want.variant)
    };
    let candidates = || entries.iter().filter(|d| d.platform.is_some());
    candidates()
        .find(|d| matches(d.platform.as_ref().unwrap_or(want), true))
        .or_else(|| candidates().find(|d| matches(d.platform.as_ref().unwrap_or(want), false)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRuntimeConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawConfigBlob {
    #[serde(default)]
    config: Option<RawRuntimeConfig>,
    rootfs: RawRootFs,
}

/// The parts of a config blob we keep: runtime defaults and the uncompressed layer
/// digests (diff ids), which name the unpacked layers.
pub(crate) struct ParsedConfig {
    pub config: ImageConfig,
    pub diff_ids: Vec<String>,
}

pub(crate) fn parse_config(
    reference: &str,
    digest: &str,
    bytes: &[u8],
) -> Result<ParsedConfig, ImageError> {
    let fail = |reason: String| ImageError::ParseConfig {
        reference: reference.to_string(),
        digest: digest.to_string(),
        reason,
    };
    let raw: RawConfigBlob = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
    for d in &raw.rootfs.diff_ids {
        super::reference::validate_digest(d).map_err(&fail)?;
    }
    let rc = raw.config.unwrap_or(RawRuntimeConfig {
        env: None,
        entrypoint: None,
        cmd: None,
        working_dir: None,
        user: None,
        stop_signal: None,
    });
    // Docker writes "" for unset strings; treat it as unset.
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(ParsedConfig {
        config: ImageConfig {
            env: rc.env.unwrap_or_default(),
            entrypoint: rc.entrypoint,
            cmd: rc.cmd,
            working_dir: non_empty(rc.working_dir),
            user: non_empty(rc.user),
            stop_signal: non_empty(rc.stop_signal),
        },
        diff_ids: raw.rootfs.diff_ids,
    })
}

/// Chain ids per the OCI image spec (config.md, "Layer ChainID"): the first is the first
/// diff id; each next is `sha256(parent_chain_id + " " + diff_id)`. A chain id names a
/// layer *with everything below it*, which is what makes an unpacked layer reusable.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn index_selects_the_host_platform_entry() {
        let entries = vec![
            desc("arm", Some("v7"), 1),
            desc("amd64", None, 2),
            desc("arm64", Some("v8"), 3),
        ];
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&entries, &amd64).unwrap().digest,
            entries[1].digest
        );
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(
            select_platform(&entries, &arm64).unwrap().digest,
            entries[2].digest
        );
        let riscv = Platform {
            architecture: "riscv64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(select_platform(&entries, &riscv).is_none());
    }

    #[test]
    fn chain_id_of_two_layers_follows_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], want);
    }

    #[test]
    fn docker_config_blob_yields_runtime_defaults() {
        let blob = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"","User":"1000","StopSignal":"SIGQUIT"},
            "rootfs":{"type":"layers","diff_ids":["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}}"#;
        let p = parse_config("r", "d", blob).unwrap();
        assert_eq!(p.config.env, vec!["PATH=/bin"]);
        assert_eq!(p.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(p.config.entrypoint, None);
        assert_eq!(p.config.working_dir, None);
        assert_eq!(p.config.user.as_deref(), Some("1000"));
        assert_eq!(p.config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(p.diff_ids.len(), 1);
    }

    #[test]
    fn schema1_manifest_is_rejected_with_a_reason() {
        let err = parse_manifest("r", br#"{"schemaVersion":1,"fsLayers":[]}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("schemaVersion"), "{err}");
    }
}
