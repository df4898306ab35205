//! Command-line definitions (clap). `main.rs` dispatches; the work lives in the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// wharf: a declarative container engine.
#[derive(Debug, Parser)]
#[command(name = "wharf", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: watch manifests and converge the host to them.
    Agent(AgentArgs),
    /// Check manifest files offline; prints one `file:line:column: message` per error.
    Validate {
        /// Files or folders (searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Table of containers from one or more agents.
    #[command(alias = "ps")]
    Status(HostArgs),
    /// Print a container's logs.
    Logs {
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new output.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Print a container object as JSON.
    Inspect {
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Pull an image into the local store and print its digest.
    Pull {
        reference: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Internal: the per-container shim (started by the agent).
    #[command(hide = true)]
    Shim {
        /// The container's directory under the state root (holds `config.json`).
        #[arg(long)]
        bundle: PathBuf,
    },
}

/// Flags of `wharf agent`; each also reads `WHARF_<FLAG>`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The watched manifests folder.
    #[arg(long, env = "WHARF_MANIFESTS", default_value = "/etc/wharf/manifests")]
    pub manifests: PathBuf,
    /// Persistent state: images, volumes, records.
    #[arg(long, env = "WHARF_STATE", default_value = "/var/lib/wharf")]
    pub state: PathBuf,
    /// Runtime state that does not survive a reboot.
    #[arg(long, env = "WHARF_RUN_DIR", default_value = "/run/wharf")]
    pub run_dir: PathBuf,
    /// The read-only endpoint: `HOST:PORT` or `unix:/path`.
    #[arg(long, env = "WHARF_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// Registries reached over plain HTTP.
    #[arg(
        long = "insecure-registry",
        env = "WHARF_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Full relist and reconcile period, even without events.
    #[arg(long, env = "WHARF_RESYNC", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub resync: std::time::Duration,
    /// Sync manifests from a git repository (not supported yet).
    #[arg(long, env = "WHARF_GIT_REPO")]
    pub git_repo: Option<String>,
    /// Git ref to follow (with --git-repo).
    #[arg(long, env = "WHARF_GIT_REF")]
    pub git_ref: Option<String>,
    /// Folder inside the repository (with --git-repo).
    #[arg(long, env = "WHARF_GIT_PATH")]
    pub git_path: Option<String>,
    /// Poll interval (with --git-repo).
    #[arg(long, env = "WHARF_GIT_INTERVAL")]
    pub git_interval: Option<String>,
}

/// Which agents a client command talks to.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Agent endpoint URL; repeat for several hosts.
    #[arg(
        long = "host",
        env = "WHARF_HOST",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7878"
    )]
    pub hosts: Vec<String>,
}

/// The image store that offline image commands use.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    #[arg(long, env = "WHARF_STATE", default_value = "/var/lib/wharf")]
    pub state: PathBuf,
    #[arg(
        long = "insecure-registry",
        env = "WHARF_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}
