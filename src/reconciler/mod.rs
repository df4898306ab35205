//! The reconciler: desired state (manifests) against observed state (runtime), a pure
//! planner, and apply through narrow traits.
//!
//! Level-triggered (style.md, item 3): every pass looks at the whole desired and
//! observed state, never at the event that woke it. Steps run as one task per
//! container, so independent containers converge in parallel and one container is never
//! worked on twice at once; failures go through one backoff policy.

pub mod apply;
pub mod backoff;
pub mod inputs;
pub mod plan;
pub mod preview;
pub mod status;

use std::future::Future;
use std::path::PathBuf;

pub use apply::Reconciler;

use crate::manifest::PullPolicy;
use crate::runtime::ImageConfig;

/// An image ready to run: its digest, its config, its unpacked layers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub digest: String,
    pub defaults: ImageConfig,
    /// Bottom first.
    pub layers: Vec<PathBuf>,
}

/// The reconciler's view of the image store.
pub trait Images: Send + Sync + 'static {
    /// Makes the image available locally as `policy` says; the error is for humans.
    fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> impl Future<Output = Result<ImageInfo, String>> + Send;
}

/// Annotation keys on a container's OCI config: what the reconciler needs to know about
/// a container it finds, even one created by an earlier agent process.
pub mod keys {
    pub const SPEC_HASH: &str = "io.wharf.spec-hash";
    pub const CONTAINER: &str = "io.wharf.container";
    pub const SOURCE: &str = "io.wharf.source";
    pub const IMAGE: &str = "io.wharf.image";
    pub const IMAGE_DIGEST: &str = "io.wharf.image-digest";
    pub const STOP_SIGNAL: &str = "io.wharf.stop-signal";
    /// The named volumes it mounts, comma-separated.
    pub const VOLUMES: &str = "io.wharf.volumes";
}

#[cfg(test)]
mod tests;
