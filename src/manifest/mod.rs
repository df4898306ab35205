//! Manifests: the user's desired state, read from YAML files.
//!
//! The pipeline, in order:
//! 1. [`scan_dir`] / [`watch_dir`] produce a *full snapshot* of the manifest files
//!    (kubelet's file source idea: the latest snapshot wins, bursts coalesce).
//! 2. [`parse_file`] turns one file into typed objects, collecting *every* error with
//!    file, line and column (strict: unknown fields, wrong types and bad values are
//!    errors). serde-saphyr stays behind the private `yaml` module.
//! 3. [`Loader::load`] assembles the [`DesiredState`]: an invalid file keeps its last
//!    good objects, a `kind/name` defined twice is frozen, and overlapping network
//!    subnets are rejected.
//! 4. [`Container::spec_hash`] decides replace vs keep; [`changed_fields`] says why.
//!
//! The format itself is specified in `manifest-v1.md` (the user contract).

mod check;
mod container;
mod decode;
mod hash;
mod loader;
mod network;
mod scan;
mod source;
mod types;
mod yaml;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use hash::changed_fields;
pub use loader::{validate_paths, DesiredState, FileReport, Loader};
pub use network::DEFAULT_NETWORK_SUBNET;
pub(crate) use scan::read_text;
pub use scan::{escape_name, scan_dir, scan_dir_with, ReadError, ScanPolicy, SourceFile};
pub use source::{watch_dir, Snapshot, WatchGuard};
pub use types::*;

/// Errors of the manifest module that are not diagnostics about the user's files
/// (those are [`Diagnostic`]s, collected rather than returned).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifests root exists but is not a folder.
    #[error("manifests root {path} is not a directory")]
    RootNotADirectory {
        /// The root as given.
        path: String,
    },
    /// The watcher thread could not be started.
    #[error("cannot start the manifest watcher for {path}: {source}")]
    SpawnWatcher {
        /// The watched root.
        path: String,
        /// Why the thread could not be spawned.
        source: std::io::Error,
    },
}

/// One problem found in a manifest file, pointing at the offending key or value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file, as the user would find it (relative to the manifests root for the
    /// agent; as given on the command line for `wharf validate`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a known position.
    pub fn at(file: &str, line: usize, column: usize, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    /// A diagnostic about a whole file (I/O errors and the like).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: message`, the format editors and CI annotators understand.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.message)
            }
            (Some(line), None) => write!(f, "{}:{line}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Parses one manifest file: every non-empty YAML document becomes an object.
///
/// Returns the objects of the documents that are valid, and every problem found.
/// A caller that needs the file to be valid as a whole (the [`Loader`]) treats any
/// diagnostic as a failure of the file. Checks that need more than one object
/// (the same `kind/name` twice, overlapping subnets) are made by [`Loader::load`]
/// and [`validate_paths`], not here.
pub fn parse_file(file: &str, text: &str) -> (Vec<Sourced<Object>>, Vec<Diagnostic>) {
    let mut cx = decode::Ctx::new(file);
    let documents = yaml::parse_documents(text, &mut cx);
    let mut objects = Vec::new();
    for doc in &documents {
        if let Some((object, pos)) = decode::decode_document(&mut cx, doc) {
            objects.push(Sourced {
                object,
                file: file.to_string(),
                line: pos.line,
                column: pos.column,
            });
        }
    }
    (objects, cx.into_diagnostics())
}

#[cfg(test)]
mod tests;
