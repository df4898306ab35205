//! wharf: a declarative container engine for Linux hosts.
//!
//! An agent watches a folder of YAML manifests, diffs that desired state against
//! what runs, and converges through the built-in runtime. See `README.md` and
//! `docs/` for the architecture.

pub mod agent;
pub mod api;
pub mod class;
pub mod cli;
pub mod client;
pub mod fault;
pub mod health;
pub mod images;
pub mod manifest;
pub mod net;
pub mod reconciler;
pub mod reset;
pub mod runtime;
pub mod state;
pub mod table;
pub mod units;
pub mod volumes;
