//! Images: references, the registry client, the content store and layer unpacking.
//!
//! # On-disk layout (under `<state>/images`, the store root)
//!
//! ```text
//! blobs/sha256/<hex>            content-addressed blobs: manifests, configs, compressed layers
//! layers/<chain-id hex>/        one unpacked layer (an overlayfs lowerdir), made once per chain id
//! records/<digest hex>.json     what `lookup` needs for one image: the resolved manifest, config
//!                               and layer list (keyed by the digest the reference resolved to)
//! refs/<sha256(ref) hex>.json   `{"reference": "docker.io/library/busybox:latest", "digest": "sha256:…"}`
//! tmp/                          in-flight downloads and unpacks; renamed into place when complete;
//!                               also where prune renames a layer before deleting it
//! used/<digest hex>             empty; its mtime is when a container last used the image
//! lock                          the store lock (below)
//! ```
//!
//! Write order gives crash safety without a lock: blobs, then layers, then the image
//! record, then the reference record. A reader only follows a reference to a record that
//! is complete, and a record only names blobs and layers that are already in place.
//! Every name in `blobs/` and `layers/` appears by `rename` of a finished temp file or
//! directory, so a crash never leaves a half blob or half layer under its final name.
//! Two processes (agent and `wharf pull`) pulling at once each write their own temp files;
//! the first rename wins and the second finds the content already there.
//!
//! # Locking
//!
//! Every command and the agent take `flock(<root>/lock)` ([`StoreLock`]): *shared* to
//! add or read content (pull, import, tag, push, export), *exclusive* to remove it
//! (`image rm`, prune). So nothing is deleted while a pull may be about to reuse it,
//! and CLI commands are safe beside a running agent. Lookups take no lock: they only
//! follow complete records. Removal runs in the reverse of the write order (references,
//! then records, then unreferenced blobs and layers), and a layer directory is renamed
//! into `tmp/` before it is deleted, so a crash never leaves a half layer under its
//! final name. GC never removes what a remaining record names, nor any image whose
//! digest the caller says is in use (a layer is an overlay lowerdir of containers).
//!
//! References are keyed by a hash of the normalised reference because a reference holds
//! `/`, `:` and `@`; the record itself carries the readable reference.

mod archive;
mod auth;
mod catalog;
pub mod commands;
mod config;
mod content;
mod durable;
mod gc;
mod lock;
pub mod progress;
mod pull;
mod push;
mod reference;
mod retry;
mod store;
mod tar_guard;
mod unpack;

use std::path::PathBuf;

pub use auth::{docker_config_path, Credentials, DockerConfig};
pub use catalog::ImageSummary;
pub use config::ImageConfig;
pub use content::ContentStore;
pub use gc::PruneReport;
pub use lock::{LockMode, StoreLock};
pub use progress::ProgressEvent;
pub use pull::{
    PullStats, RegistryConfig, BODY_IDLE_TIMEOUT, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
};
pub use reference::normalize_reference;
pub use store::ImageStore;
pub use unpack::{unpack_layer, unpack_layer_with, UnpackStats, DEFAULT_MAX_LAYER_BYTES};

/// When to contact the registry for an image (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PullPolicy {
    /// Use the local image if present, else pull it.
    #[default]
    IfNotPresent,
    /// Always ask the registry (cheap when nothing changed: blobs already present are
    /// not downloaded again).
    Always,
    /// Never contact the registry; a missing image is an error.
    Never,
}

/// A pulled image, ready to run: its layers are unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The digest the reference resolved to (`sha256:…`): the manifest's, or the index's
    /// for a multi-platform image, as `skopeo inspect --raw` and Docker's RepoDigests
    /// report it, so `reference@digest` pulls the same image again.
    pub digest: String,
    /// The runtime defaults from the image config blob.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first (reverse them for overlayfs `lowerdir`,
    /// which lists the top layer first).
    pub layers: Vec<PathBuf>,
}

/// Everything that can fail in the image subsystem. Each variant names the failed
/// operation and carries the reference or path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    ParseReference { reference: String, reason: String },
    #[error("open image store {}: {source}", path.display())]
    OpenStore {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {reference} is not present locally and the pull policy is Never")]
    NotPresent { reference: String },
    #[error("read image record {}: {source}", path.display())]
    ReadRecord {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write image record {}: {source}", path.display())]
    WriteRecord {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fetch manifest of {reference}: {source}")]
    FetchManifest {
        reference: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error(
        "manifest of {reference} does not match its digest: expected {expected}, got {actual}"
    )]
    VerifyManifest {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("parse manifest of {reference}: {reason}")]
    ParseManifest { reference: String, reason: String },
    /// A registry answer larger than wharf reads (a manifest, an index or a config).
    #[error("{what} of {reference} is {size} bytes, more than the {limit} wharf reads; the registry is broken or hostile")]
    TooLarge {
        reference: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{reference} has no manifest for platform {platform}")]
    SelectPlatform { reference: String, platform: String },
    #[error("fetch blob {digest} of {reference}: {source}")]
    FetchBlob {
        reference: String,
        digest: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error("write blob {digest} to {}: {source}", path.display())]
    WriteBlob {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("commit blob {digest}: expected {expected_size} bytes with that digest, got {actual_size} bytes with {actual}")]
    CommitBlob {
        digest: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("read blob {}: {source}", path.display())]
    ReadBlob {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse image config {digest} of {reference}: {reason}")]
    ParseConfig {
        reference: String,
        digest: String,
        reason: String,
    },
    #[error("unsupported layer {digest} of {reference}: media type {media_type}")]
    UnsupportedLayer {
        reference: String,
        digest: String,
        media_type: String,
    },
    #[error("unpack layer into {}: entry {entry:?}: {reason}", path.display())]
    UnpackEntry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    /// A layer whose files add up to more than the configured cap.
    #[error("unpack layer into {}: its files add up to more than the {limit} bytes a layer may unpack to (--max-layer-size)", path.display())]
    LayerTooLarge { path: PathBuf, limit: u64 },
    #[error("unpack layer into {}: {source}", path.display())]
    UnpackLayer {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layer {digest} unpacked to {actual}, but the image config says diff id {expected}")]
    VerifyDiffId {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("background task for {reference} failed: {reason}")]
    Task { reference: String, reason: String },
    #[error("no local image {reference}")]
    NotFound { reference: String },
    #[error("lock image store {}: {source}", path.display())]
    LockStore {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {reference} ({digest}) is used by {users}; remove those first")]
    ImageInUse {
        reference: String,
        digest: String,
        users: String,
    },
    #[error("no image is removed while a container's image is unknown: {0}")]
    UsersUnknown(crate::runtime::records::RecordError),
    #[error("remove {} from the image store: {source}", path.display())]
    RemoveContent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("import {}: {reason}", path.display())]
    ImportArchive { path: PathBuf, reason: String },
    #[error("import {}: {source}", path.display())]
    ReadArchive {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("export {reference} to {}: {source}", path.display())]
    ExportImage {
        reference: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {reference} lacks blob {digest} locally (its layer came from another image); pull it again to push or export it")]
    MissingBlob { reference: String, digest: String },
    #[error("push {what} {digest} of {reference}: {source}")]
    Push {
        reference: String,
        what: &'static str,
        digest: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error("lock {} in the image store: {source}", path.display())]
    LockContent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read registry credentials from {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    #[error("invalid registry mirror {mirror:?}: {reason}")]
    InvalidMirror { mirror: String, reason: String },
    #[error("pull {reference}: {registry} answered {reason}: {hint}")]
    RegistryAccess {
        reference: String,
        registry: String,
        reason: String,
        hint: String,
    },
    #[error("pull {reference}: {what} not found on {registry}: check the repository name and tag (a private repository also looks like this without credentials)")]
    RegistryNotFound {
        reference: String,
        registry: String,
        what: String,
    },
    #[error("pull {reference}: {registry} sent nothing for {timeout:?} ({attempts} attempts); it is unreachable or overloaded")]
    RegistryTimeout {
        reference: String,
        registry: String,
        timeout: std::time::Duration,
        attempts: u32,
    },
}

impl crate::class::Classify for ImageError {
    /// Permanent: what no retry of the same reference can change (a malformed
    /// reference, an image without this platform, a layer format or size wharf does not
    /// take). The rest is transient: a registry down, slow or refusing credentials, a
    /// missing tag (it may be pushed later, as kubelet's ImagePullBackOff assumes), a
    /// full disk.
    fn class(&self) -> crate::class::ErrorClass {
        use crate::class::ErrorClass::{Permanent, Transient};
        match self {
            ImageError::ParseReference { .. }
            | ImageError::SelectPlatform { .. }
            | ImageError::UnsupportedLayer { .. }
            | ImageError::LayerTooLarge { .. }
            | ImageError::InvalidMirror { .. } => Permanent,
            _ => Transient,
        }
    }
}
