//! `wharf system reset`: removes everything one instance made, for people trying wharf
//! out or uninstalling it. Docker has no such command (`docker system prune` keeps
//! running containers and the `docker0` bridge); this is the closest to `podman system
//! reset`, but it keeps images and volumes unless `--purge` is given.
//!
//! In order, best effort, every error collected (netavark's `host_teardown` style):
//! 1. refuse, touching nothing, when an agent holds the state root's lock, or when a
//!    root holds entries wharf does not make (a mistyped `--state /var/lib` must not
//!    send `/var/lib/containers` the way of our container records);
//! 2. containers: each stopped with its stop signal and grace period, then removed
//!    (process, cgroup, record, run folder), all at once as `docker stop` does;
//! 3. cgroups of this instance left without a record, then `wharf/<instance>`;
//! 4. networks: every attachment, bridge (`default` too), link with the instance's
//!    prefix and its nftables table
//!    ([`Networks::teardown`](crate::net::driver::Networks::teardown));
//!    `net.ipv4.ip_forward` is host-wide and left as it is, as Docker leaves it;
//! 5. the run dir, after the network namespaces pinned in it are unmounted; never
//!    through another mount;
//! 6. with `--purge`, the state root (images, volumes, records), last, when everything
//!    that used it is gone.
//!
//! Running it again finds nothing and says so: each line printed is something that
//! existed before and is gone after.

mod cgroups;
mod containers;
mod networks;
mod paths;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::{self, AgentError};
use crate::cli::ResetArgs;
use crate::images::ImageError;
use crate::net::driver::NetError;
use crate::net::firewall::FirewallError;
use crate::net::link;
use crate::net::netns::NetnsError;
use crate::runtime::{LinuxRuntime, RuntimeError};

use paths::{RUN_ENTRIES, STATE_ENTRIES};

/// Why reset refused to start, or what it could not remove; each names the object.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("an agent is running on state root {} (it holds {}): stop it first, then reset", state.display(), lock.display())]
    AgentRunning { state: PathBuf, lock: PathBuf },
    #[error("lock state root {}: {source}", state.display())]
    LockState {
        state: PathBuf,
        source: Box<AgentError>,
    },
    #[error("refusing to reset {}: it holds {} which wharf does not make; is --{flag} right?", path.display(), few(entries))]
    ForeignEntries {
        path: PathBuf,
        flag: &'static str,
        entries: Vec<String>,
    },
    #[error("read {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Container(#[from] RuntimeError),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("cgroup {path} is still there ({}): a process may still be in it", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    RemoveCgroup { path: String, dirs: Vec<PathBuf> },
    #[error("read the mount table: {0}")]
    ReadMounts(io::Error),
    #[error("kept {}: {} is mounted under it (unmount it, then reset again)", path.display(), mount.display())]
    MountedUnder { path: PathBuf, mount: PathBuf },
    #[error("remove {}: {source}", path.display())]
    RemoveDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    LockImages(#[from] ImageError),
    #[error("{what}: a task failed: {message}")]
    Task { what: String, message: String },
}

/// The first names of a list, and how many more there are.
fn few(names: &[String]) -> String {
    const SHOWN: usize = 5;
    match names.len() {
        n if n <= SHOWN => names.join(", "),
        n => format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

impl From<NetnsError> for ResetError {
    fn from(e: NetnsError) -> Self {
        ResetError::Network(e.into())
    }
}

impl From<FirewallError> for ResetError {
    fn from(e: FirewallError) -> Self {
        ResetError::Network(e.into())
    }
}

impl From<link::LinkError> for ResetError {
    fn from(e: link::LinkError) -> Self {
        ResetError::Network(e.into())
    }
}

/// One thing reset removed; its `Display` is the line printed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Container(String),
    Network {
        name: String,
        bridge: String,
    },
    /// A link with the instance's prefix that no network record named (a veth).
    Link(String),
    /// A network namespace pinned under the run dir.
    Netns(PathBuf),
    /// The instance's nftables table (family `inet`).
    Table(String),
    /// A cgroup path relative to the hierarchies (`wharf/<instance>[/<name>]`).
    Cgroup(String),
    RunDir(PathBuf),
    StateRoot(PathBuf),
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removed::Container(name) => write!(f, "removed container {name}"),
            Removed::Network { name, bridge } => {
                write!(f, "removed network {name} (bridge {bridge})")
            }
            Removed::Link(name) => write!(f, "removed link {name}"),
            Removed::Netns(path) => write!(f, "removed network namespace {}", path.display()),
            Removed::Table(name) => write!(f, "removed nftables table {name}"),
            Removed::Cgroup(path) => write!(f, "removed cgroup {path}"),
            Removed::RunDir(path) => write!(f, "removed run dir {}", path.display()),
            Removed::StateRoot(path) => write!(f, "removed state root {}", path.display()),
        }
    }
}

/// What a reset did.
#[derive(Debug, Default)]
pub struct Summary {
    pub removed: Vec<Removed>,
    /// How many things could not be removed (each was printed).
    pub failed: usize,
}

impl Summary {
    /// The last line: counts of what went, or `nothing to remove`.
    pub fn line(&self) -> String {
        let count = |f: fn(&Removed) -> bool| self.removed.iter().filter(|r| f(r)).count();
        let mut parts = Vec::new();
        for (n, one, many) in [
            (
                count(|r| matches!(r, Removed::Container(_))),
                "container",
                "containers",
            ),
            (
                count(|r| matches!(r, Removed::Network { .. })),
                "network",
                "networks",
            ),
            (count(|r| matches!(r, Removed::Link(_))), "link", "links"),
            (
                count(|r| matches!(r, Removed::Netns(_))),
                "network namespace",
                "network namespaces",
            ),
            (
                count(|r| matches!(r, Removed::Table(_))),
                "nftables table",
                "nftables tables",
            ),
            (
                count(|r| matches!(r, Removed::Cgroup(_))),
                "cgroup",
                "cgroups",
            ),
        ] {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        }
        if self.removed.iter().any(|r| matches!(r, Removed::RunDir(_))) {
            parts.push("the run dir".into());
        }
        if self
            .removed
            .iter()
            .any(|r| matches!(r, Removed::StateRoot(_)))
        {
            parts.push("the state root".into());
        }
        let failed = match self.failed {
            0 => String::new(),
            1 => "; 1 thing could not be removed".into(),
            n => format!("; {n} things could not be removed"),
        };
        match (parts.is_empty(), self.failed) {
            (true, 0) => "nothing to remove".into(),
            (true, _) => format!("removed nothing{failed}"),
            (false, _) => format!("removed {}{failed}", parts.join(", ")),
        }
    }
}

/// Prints each removal to `out` and each error to `err` as it happens, and counts.
/// Output errors (a closed pipe) are ignored: they do not change what was removed.
struct Reporter<'a, O: Write, E: Write> {
    out: &'a mut O,
    err: &'a mut E,
    summary: Summary,
}

impl<O: Write, E: Write> Reporter<'_, O, E> {
    fn removed(&mut self, r: Removed) {
        let _ = writeln!(self.out, "{r}");
        self.summary.removed.push(r);
    }

    fn failed(&mut self, e: ResetError) {
        let _ = writeln!(self.err, "wharf: {e}");
        self.summary.failed += 1;
    }

    fn take(&mut self, (removed, errors): (Vec<Removed>, Vec<ResetError>)) {
        removed.into_iter().for_each(|r| self.removed(r));
        errors.into_iter().for_each(|e| self.failed(e));
    }
}

/// `wharf system reset`: see the module doc. `Err` only for a refusal, before anything
/// was touched; what could not be removed is printed and counted in the summary.
pub async fn run(
    args: &ResetArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<Summary, ResetError> {
    let (state, run_dir) = (&args.state, &args.run_dir);
    paths::check_entries(state, "state", STATE_ENTRIES)?;
    paths::check_entries(run_dir, "run-dir", RUN_ENTRIES)?;
    // Held to the end, so no agent starts on the root while it is taken apart. A root
    // that does not exist has no agent (and is not created here).
    let _lock = if state.is_dir() {
        Some(lock_state(state)?)
    } else {
        None
    };
    let instance = agent::instance_id(state);
    let mut report = Reporter {
        out,
        err,
        summary: Summary::default(),
    };
    let shim_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let runtime = Arc::new(LinuxRuntime::new(state, run_dir, &instance, shim_exe));

    // Looked at first: removing the last container also removes its parent cgroup.
    let cgroup_root = Path::new(cgroups::CGROUP_ROOT);
    let had_cgroup = cgroups::instance_cgroup_exists(cgroup_root, &instance);

    report.take(containers::remove_containers(runtime.clone(), args.timeout).await);
    report.take(cgroups::remove_cgroups(runtime, &instance, cgroup_root, had_cgroup).await);
    report.take(networks::remove_networks(state, run_dir, &instance).await);
    report.take(paths::remove_run_dir(run_dir));
    if args.purge {
        report.take(paths::remove_state_root(state).await);
    }

    let summary = std::mem::take(&mut report.summary);
    let _ = writeln!(report.out, "{}", summary.line());
    if !args.purge && state.is_dir() {
        let _ = writeln!(
            report.out,
            "kept state root {} (images, volumes; --purge deletes it)",
            state.display()
        );
    }
    Ok(summary)
}

fn lock_state(state: &Path) -> Result<nix::fcntl::Flock<fs::File>, ResetError> {
    agent::lock_state(state).map_err(|e| match e {
        AgentError::Locked { path, lock } => ResetError::AgentRunning { state: path, lock },
        e => ResetError::LockState {
            state: state.to_owned(),
            source: Box::new(e),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_what_went_and_says_when_there_was_nothing() {
        assert_eq!(Summary::default().line(), "nothing to remove");
        let summary = Summary {
            removed: vec![
                Removed::Container("web".into()),
                Removed::Container("db".into()),
                Removed::Network {
                    name: "default".into(),
                    bridge: "wh0a1b2cb0".into(),
                },
                Removed::Table("wharf_0a1b2c3d".into()),
                Removed::Cgroup("wharf/0a1b2c3d".into()),
                Removed::RunDir("/run/wharf".into()),
            ],
            failed: 1,
        };
        assert_eq!(
            summary.line(),
            "removed 2 containers, 1 network, 1 nftables table, 1 cgroup, the run dir; 1 thing could not be removed"
        );
        assert_eq!(
            summary.removed[2].to_string(),
            "removed network default (bridge wh0a1b2cb0)"
        );
        let failed = Summary {
            removed: Vec::new(),
            failed: 2,
        };
        assert_eq!(
            failed.line(),
            "removed nothing; 2 things could not be removed"
        );
    }
}
