//! The reconciler: desired state (manifests) against observed state (runtime), a pure
//! planner, and apply through narrow traits.
//!
//! Level-triggered (style.md, item 3): every pass looks at the whole desired and
//! observed state, never at the event that woke it. Steps run as one task per
//! container, so independent containers converge in parallel and one container is never
//! worked on twice at once; failures go through one backoff policy (`backoff.rs`) and
//! are classed by the seam that failed (`crate::class`): transient ones are retried,
//! permanent ones wait for an edit.

pub mod apply;
pub mod backoff;
pub mod inputs;
mod memo;
pub mod plan;
pub mod preview;
mod report;
pub mod status;
pub mod task;

use std::future::Future;
use std::path::PathBuf;

pub use apply::{Reconciler, Seams};

use crate::images::ImageError;
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
    /// Makes the image available locally as `policy` says.
    fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> impl Future<Output = Result<ImageInfo, ImageError>> + Send;
}

#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;
