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
    /// Offline: what the agent would create, replace (and which fields), restart and
    /// remove for these manifests, against its records on disk.
    Plan {
        /// A manifests folder (searched recursively) or one file.
        path: PathBuf,
        #[arg(long, env = "WHARF_STATE", default_value = "/var/lib/wharf")]
        state: PathBuf,
        #[arg(long, env = "WHARF_RUN_DIR", default_value = "/run/wharf")]
        run_dir: PathBuf,
    },
    /// Table of containers from one or more agents.
    #[command(alias = "ps")]
    Status(HostArgs),
    /// Table of named volumes from one or more agents: policy, state, size, users, path.
    Volumes(HostArgs),
    /// Print a container's logs.
    Logs {
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new output (across restarts and replaces: every line of the
        /// old container, then the new one's).
        #[arg(long, short = 'f')]
        follow: bool,
        /// The previous run's output: before the last restart or replace (kubectl's
        /// `--previous`).
        #[arg(long, short = 'p', conflicts_with = "follow")]
        previous: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Run a command in a running container, confined as its own processes are (its
    /// namespaces, cgroup, user, capabilities, seccomp, environment). On the host, as
    /// root: it reads the container's state directly. Exits with the command's status.
    Exec {
        name: String,
        /// `uid[:gid]` or `name[:group]` of the container's, instead of its user.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// `KEY=VALUE` over the container's environment (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// Instead of the container's working directory.
        #[arg(long, short = 'w')]
        workdir: Option<String>,
        #[arg(long, env = "WHARF_STATE", default_value = "/var/lib/wharf")]
        state: PathBuf,
        #[arg(long, env = "WHARF_RUN_DIR", default_value = "/run/wharf")]
        run_dir: PathBuf,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container object as JSON.
    Inspect {
        name: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Pull an image into the local store and print its digest (progress on a terminal).
    Pull {
        reference: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Push a local image to the registry its reference names.
    Push {
        reference: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List local images.
    Images {
        /// JSON array of {"references", "digest", "size", "layers"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage local images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Commands about this wharf installation as a whole.
    #[command(subcommand)]
    System(SystemCommand),
    /// Internal: the per-container shim (started by the agent).
    #[command(hide = true)]
    Shim {
        /// The container's directory under the state root (holds `config.json`).
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Internal: runs the agent's `exec` health probes (started by the agent).
    #[command(hide = true)]
    Prober {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        run_dir: PathBuf,
    },
}

/// `wharf image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Another reference for the same image.
    Tag {
        source: String,
        target: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove references; the data goes with the next prune. An image a container uses
    /// is refused.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove images without references that no container uses, and unreferenced data.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Import an OCI layout tar or a `docker save` archive; with --rootfs, make a
    /// one-layer image NAME from a directory (like `docker import`).
    Import {
        /// Make an image from this directory instead of an archive.
        #[arg(long, value_name = "DIR")]
        rootfs: Option<PathBuf>,
        /// The archive (FILE), or with --rootfs the image's reference (NAME).
        #[arg(value_name = "FILE|NAME")]
        target: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write an image as an OCI layout tar (with docker save's manifest.json too).
    Export {
        reference: String,
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List local images (as `wharf images`).
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `wharf system …`
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Remove everything this instance made: containers (stopped first), networks with
    /// the default bridge, links, its nftables table, cgroups, the run dir. Images and
    /// volumes stay unless --purge. Refused while an agent runs on the state root.
    Reset(ResetArgs),
}

/// Flags of `wharf system reset`.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// The state root of the instance to reset (as the agent's --state).
    #[arg(long, env = "WHARF_STATE", default_value = "/var/lib/wharf")]
    pub state: PathBuf,
    /// Its run dir (as the agent's --run-dir).
    #[arg(long, env = "WHARF_RUN_DIR", default_value = "/run/wharf")]
    pub run_dir: PathBuf,
    /// Also delete the state root: images, volumes, records.
    #[arg(long)]
    pub purge: bool,
    /// Time between each container's stop signal and SIGKILL (default: its
    /// stopGracePeriod, else 10s).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub timeout: Option<std::time::Duration>,
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
    /// Mirrors for docker.io, tried in order before Docker Hub.
    #[arg(
        long = "registry-mirror",
        env = "WHARF_REGISTRY_MIRROR",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// The most one layer may unpack to (e.g. `64Gi`); a larger layer fails the pull.
    #[arg(long, env = "WHARF_MAX_LAYER_SIZE", default_value = "64Gi", value_parser = crate::units::parse_size)]
    pub max_layer_size: u64,
    /// How long an image no declared container uses is kept before garbage collection.
    #[arg(long, env = "WHARF_IMAGE_GC_GRACE", default_value = "24h", value_parser = crate::units::parse_duration)]
    pub image_gc_grace: std::time::Duration,
    /// Full relist and reconcile period, even without events.
    #[arg(long, env = "WHARF_RESYNC", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub resync: std::time::Duration,
    /// Follow symlinks in the manifests folder whose target is outside it (by default
    /// such a link is reported as an error and not read).
    #[arg(long, env = "WHARF_ALLOW_EXTERNAL_SYMLINKS")]
    pub allow_external_symlinks: bool,
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
    /// Mirrors for docker.io, tried in order before Docker Hub.
    #[arg(
        long = "registry-mirror",
        env = "WHARF_REGISTRY_MIRROR",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
    /// The most one layer may unpack to (e.g. `64Gi`); a larger layer fails the pull.
    #[arg(long, env = "WHARF_MAX_LAYER_SIZE", default_value = "64Gi", value_parser = crate::units::parse_size)]
    pub max_layer_size: u64,
}
