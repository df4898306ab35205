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
//!    prefix and its nftables table ([`Networks::teardown`]); `net.ipv4.ip_forward` is
//!    host-wide and left as it is, as Docker leaves it;
//! 5. the run dir, after the network namespaces pinned in it are unmounted; never
//!    through another mount;
//! 6. with `--purge`, the state root (images, volumes, records), last, when everything
//!    that used it is gone.
//!
//! Running it again finds nothing and says so: each line printed is something that
//! existed before and is gone after.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::agent::{self, AgentError};
use crate::cli::ResetArgs;
use crate::images::{ImageError, LockMode, StoreLock};
use crate::net::driver::{NetError, Networks};
use crate::net::firewall::{self, FirewallError};
use crate::net::link::{self, Netlink};
use crate::net::netns::{self, NetnsError};
use crate::runtime::linux::cgroups;
use crate::runtime::{LinuxRuntime, Observed, Runtime, RuntimeError};

/// The grace period of a container whose manifest has none (the reconciler's too).
const DEFAULT_GRACE: Duration = crate::reconciler::task::DEFAULT_STOP_GRACE;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What wharf makes at the top of the state root. A root holding anything else (but
/// temp files and sockets) is not reset: it is probably not a state root.
const STATE_ENTRIES: &[&str] = &[
    "agent.lock",
    "manifests-last-good.json",
    "containers",
    "images",
    "networks",
    "volumes",
];

/// What wharf makes at the top of the run dir (besides the endpoint's socket, if
/// `--listen unix:` put it there).
const RUN_ENTRIES: &[&str] = &["containers", "netns"];

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
    check_entries(state, "state", STATE_ENTRIES)?;
    check_entries(run_dir, "run-dir", RUN_ENTRIES)?;
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
    let cgroup_root = Path::new(CGROUP_ROOT);
    let had_cgroup = !cgroup_dirs(cgroup_root, &cgroups::instance_path(&instance)).is_empty();

    report.take(remove_containers(runtime.clone(), args.timeout).await);
    report.take(remove_cgroups(runtime, &instance, cgroup_root, had_cgroup).await);
    report.take(remove_networks(state, run_dir, &instance).await);
    report.take(remove_run_dir(run_dir));
    if args.purge {
        report.take(remove_state_root(state).await);
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

/// Refuses a root that holds what wharf does not make; a missing root is fine.
fn check_entries(root: &Path, flag: &'static str, known: &[&str]) -> Result<(), ResetError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ResetError::ReadDir {
                path: root.to_owned(),
                source,
            })
        }
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ResetError::ReadDir {
            path: root.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temp files of atomic writes are hidden; an endpoint socket may live here.
        let socket = entry.file_type().is_ok_and(|t| t.is_socket());
        if !(known.contains(&name.as_str()) || name.starts_with('.') || socket) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(ResetError::ForeignEntries {
        path: root.to_owned(),
        flag,
        entries: foreign,
    })
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

/// The signal a container is stopped with: its record's (`SIGQUIT`, or a number as the
/// manifest wrote it), else SIGTERM.
fn stop_signal(o: &Observed) -> Signal {
    let Some(name) = o.meta.as_ref().map(|m| m.stop_signal.as_str()) else {
        return Signal::SIGTERM;
    };
    Signal::from_str(name)
        .ok()
        .or_else(|| {
            name.parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
        })
        .unwrap_or(Signal::SIGTERM)
}

/// `timeout` if given, else the container's `stopGracePeriod`, else 10 s.
fn grace_period(o: &Observed, timeout: Option<Duration>) -> Duration {
    timeout
        .or_else(|| o.meta.as_ref()?.spec.as_ref()?.spec.stop_grace_period)
        .unwrap_or(DEFAULT_GRACE)
}

/// Stops every container with its stop signal and grace period, all at once, then
/// removes it. A container whose stop failed is still removed (the removal kills).
async fn remove_containers<R: Runtime>(
    runtime: Arc<R>,
    timeout: Option<Duration>,
) -> (Vec<Removed>, Vec<ResetError>) {
    let containers = match runtime.list().await {
        Ok(list) => list,
        Err(e) => return (Vec::new(), vec![e.into()]),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for o in containers {
        let rt = runtime.clone();
        tasks.spawn(async move {
            let (signal, grace) = (stop_signal(&o), grace_period(&o, timeout));
            if let Err(e) = rt.stop(&o.name, signal, grace).await {
                tracing::warn!(container = %o.name, error = %e, "stop failed; removing anyway");
            }
            (o.name.clone(), rt.remove(&o.name).await)
        });
    }
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(pair) => done.push(pair),
            Err(e) => errors.push(ResetError::Task {
                what: "remove a container".into(),
                message: e.to_string(),
            }),
        }
    }
    // In name order, whatever order they finished in.
    done.sort_by(|a, b| a.0.cmp(&b.0));
    let mut removed = Vec::new();
    for (name, result) in done {
        match result {
            Ok(()) => removed.push(Removed::Container(name)),
            Err(e) => errors.push(e.into()),
        }
    }
    (removed, errors)
}

/// The folders of cgroup `path` under `root`: `root/path` (v2), and
/// `root/<hierarchy>/path` for each v1 hierarchy and a hybrid host's `unified`.
fn cgroup_dirs(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.join(path)];
    if let Ok(entries) = fs::read_dir(root) {
        // `cpu` and `cpuacct` are links to `cpu,cpuacct`: real folders only.
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(path)),
        );
    }
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    dirs
}

/// Container cgroups of this instance that no record accounts for (a crash between
/// cgroup and record), then `wharf/<instance>` (and `wharf` when no other instance
/// uses it), reported when it `existed` before the containers went. What stays is an
/// error naming its folders.
async fn remove_cgroups(
    runtime: Arc<LinuxRuntime>,
    instance: &str,
    root: &Path,
    existed: bool,
) -> (Vec<Removed>, Vec<ResetError>) {
    let parent = cgroups::instance_path(instance);
    let orphans = tokio::task::spawn_blocking(move || runtime.remove_orphan_cgroups(&[]))
        .await
        .map_err(|e| ResetError::Task {
            what: format!("remove the cgroups under {parent}"),
            message: e.to_string(),
        });
    let (mut removed, mut errors) = (Vec::new(), Vec::new());
    match orphans {
        Ok(names) => removed.extend(
            names
                .iter()
                .map(|n| Removed::Cgroup(cgroups::container_path(instance, n))),
        ),
        Err(e) => errors.push(e),
    }
    let left = cgroup_dirs(root, &parent);
    if !left.is_empty() {
        errors.push(ResetError::RemoveCgroup {
            path: parent,
            dirs: left,
        });
    } else if existed {
        removed.push(Removed::Cgroup(parent));
    }
    (removed, errors)
}

/// What of the instance's networking exists now: links with its prefix, whether its
/// nftables table exists (`None`: unknown), its namespace files.
struct NetSnapshot {
    links: BTreeSet<String>,
    table: Option<bool>,
    namespaces: BTreeSet<PathBuf>,
}

async fn net_snapshot(
    netlink: &Netlink,
    instance: &str,
    run_dir: &Path,
    errors: &mut Vec<ResetError>,
) -> NetSnapshot {
    let links = match netlink
        .list_links_with_prefix(&link::link_prefix(instance))
        .await
    {
        Ok(links) => links.into_iter().collect(),
        Err(e) => {
            errors.push(e.into());
            BTreeSet::new()
        }
    };
    let table = firewall::wharf_tables()
        .ok()
        .map(|t| t.contains(&firewall::table_name(instance)));
    let namespaces = netns::list(&run_dir.join("netns"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    NetSnapshot {
        links,
        table,
        namespaces,
    }
}

/// Every attachment, bridge, link with the instance's prefix, its nftables table, and
/// the network records, through the driver's teardown. Without a state root (purged
/// before) there are no records: what the kernel has is swept by name alone.
async fn remove_networks(
    state: &Path,
    run_dir: &Path,
    instance: &str,
) -> (Vec<Removed>, Vec<ResetError>) {
    let mut errors = Vec::new();
    let netlink = match Netlink::connect() {
        Ok(n) => n,
        Err(e) => return (Vec::new(), vec![e.into()]),
    };
    let before = net_snapshot(&netlink, instance, run_dir, &mut errors).await;
    let mut networks = Vec::new();
    let driver = state
        .is_dir()
        .then(|| Networks::new(instance, state, run_dir));
    match driver {
        Some(Ok(mut nets)) => {
            networks = nets.networks().values().cloned().collect();
            if let Err(e) = nets.teardown().await {
                errors.push(e.into());
            }
        }
        Some(Err(e)) => {
            errors.push(e.into());
            sweep_by_name(&netlink, instance, &before, &mut errors).await;
        }
        None => sweep_by_name(&netlink, instance, &before, &mut errors).await,
    }
    let after = net_snapshot(&netlink, instance, run_dir, &mut errors).await;

    let mut removed = Vec::new();
    let bridges: BTreeSet<&str> = networks.iter().map(|n| n.bridge.as_str()).collect();
    for n in &networks {
        if !after.links.contains(&n.bridge) {
            removed.push(Removed::Network {
                name: n.name.clone(),
                bridge: n.bridge.clone(),
            });
        }
    }
    for l in before.links.difference(&after.links) {
        if !bridges.contains(l.as_str()) {
            removed.push(Removed::Link(l.clone()));
        }
    }
    for ns in before.namespaces.difference(&after.namespaces) {
        removed.push(Removed::Netns(ns.clone()));
    }
    if before.table == Some(true) && after.table == Some(false) {
        removed.push(Removed::Table(firewall::table_name(instance)));
    }
    (removed, errors)
}

/// Without records (no state root, or unreadable ones): what the kernel has, by name.
/// Namespaces first (the container ends of veths go with them), then links (veths
/// before bridges), then the table.
async fn sweep_by_name(
    netlink: &Netlink,
    instance: &str,
    found: &NetSnapshot,
    errors: &mut Vec<ResetError>,
) {
    for ns in &found.namespaces {
        if let Err(e) = netns::remove(ns) {
            errors.push(e.into());
        }
    }
    if let Err(e) = netlink
        .remove_links_with_prefix(&link::link_prefix(instance))
        .await
    {
        errors.push(e.into());
    }
    // Unknown (`nft` did not answer): try, so the error says why.
    if found.table != Some(false) {
        if let Err(e) = firewall::remove(instance) {
            errors.push(e.into());
        }
    }
}

/// Mount points strictly under `root` (deepest first) and their filesystem types, from
/// `/proc/self/mountinfo` (proc(5): field 5 is the mount point, octal-escaped; the type
/// follows the ` - ` separator).
fn mounts_under(root: &Path) -> io::Result<Vec<(PathBuf, String)>> {
    let root = root.canonicalize()?;
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<(PathBuf, String)> = table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = PathBuf::from(unescape(left.split(' ').nth(4)?));
            let fstype = right.split(' ').next()?.to_owned();
            (point != root && point.starts_with(&root)).then_some((point, fstype))
        })
        .collect();
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    Ok(mounts)
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `root` recursively unless something is mounted under it: deleting through a
/// mount would delete what it shows. Network namespaces pinned there are unmounted
/// first (they are this instance's); any other mount keeps the folder.
fn remove_tree(root: &Path, netns_ok: bool, removed: &mut Vec<Removed>) -> Result<(), ResetError> {
    let mounts = mounts_under(root).map_err(ResetError::ReadMounts)?;
    for (point, fstype) in mounts {
        if netns_ok && fstype == "nsfs" {
            netns::remove(&point)?;
            removed.push(Removed::Netns(point));
        } else {
            return Err(ResetError::MountedUnder {
                path: root.to_owned(),
                mount: point,
            });
        }
    }
    fs::remove_dir_all(root).map_err(|source| ResetError::RemoveDir {
        path: root.to_owned(),
        source,
    })
}

fn remove_run_dir(run_dir: &Path) -> (Vec<Removed>, Vec<ResetError>) {
    let mut removed = Vec::new();
    if !run_dir.exists() {
        return (removed, Vec::new());
    }
    match remove_tree(run_dir, true, &mut removed) {
        Ok(()) => {
            removed.push(Removed::RunDir(run_dir.to_owned()));
            (removed, Vec::new())
        }
        Err(e) => (removed, vec![e]),
    }
}

/// `--purge`: the whole state root, once nothing uses it. The image store's exclusive
/// lock is taken first, so a `wharf pull` in progress finishes rather than writes into
/// a folder being deleted.
async fn remove_state_root(state: &Path) -> (Vec<Removed>, Vec<ResetError>) {
    let mut removed = Vec::new();
    if !state.exists() {
        return (removed, Vec::new());
    }
    let images = state.join("images");
    let store_lock = if images.is_dir() {
        let root = images.clone();
        match tokio::task::spawn_blocking(move || StoreLock::acquire(&root, LockMode::Exclusive))
            .await
        {
            Ok(Ok(lock)) => Some(lock),
            Ok(Err(e)) => return (removed, vec![e.into()]),
            Err(e) => {
                return (
                    removed,
                    vec![ResetError::Task {
                        what: format!("lock the image store {}", images.display()),
                        message: e.to_string(),
                    }],
                )
            }
        }
    } else {
        None
    };
    let result = remove_tree(state, false, &mut removed);
    drop(store_lock);
    match result {
        Ok(()) => {
            removed.push(Removed::StateRoot(state.to_owned()));
            (removed, Vec::new())
        }
        Err(e) => (removed, vec![e]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::{request, FakeRuntime};

    #[test]
    fn a_root_with_entries_wharf_does_not_make_is_refused_and_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        check_entries(&root, "state", STATE_ENTRIES).unwrap();
        fs::create_dir_all(root.join("images")).unwrap();
        fs::create_dir_all(root.join("volumes")).unwrap();
        fs::write(root.join("agent.lock"), "").unwrap();
        fs::write(root.join(".networks.json.tmp.1.0"), "").unwrap();
        std::os::unix::net::UnixListener::bind(root.join("api.sock")).unwrap();
        check_entries(&root, "state", STATE_ENTRIES).unwrap();

        fs::create_dir_all(root.join("dpkg")).unwrap();
        fs::write(root.join("notes.txt"), "").unwrap();
        let e = check_entries(&root, "state", STATE_ENTRIES).unwrap_err();
        assert!(
            matches!(&e, ResetError::ForeignEntries { entries, .. } if entries == &["dpkg", "notes.txt"]),
            "{e}"
        );
        assert!(e.to_string().contains("is --state right?"), "{e}");
    }

    #[tokio::test]
    async fn each_container_is_stopped_with_its_own_signal_then_removed() {
        let rt = Arc::new(FakeRuntime::default());
        let mut web = request("web", &["sleep", "100"], Vec::new());
        web.meta.stop_signal = "SIGQUIT".into();
        let mut db = request("db", &["sleep", "100"], Vec::new());
        db.meta.stop_signal = "2".into();
        rt.start(web).await.unwrap();
        rt.start(db).await.unwrap();

        let (removed, errors) = remove_containers(rt.clone(), None).await;

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            removed,
            [
                Removed::Container("db".into()),
                Removed::Container("web".into())
            ]
        );
        let calls = rt.calls();
        for (name, signal) in [("web", "SIGQUIT"), ("db", "SIGINT")] {
            let stop = calls
                .iter()
                .position(|c| *c == format!("stop {name} {signal}"));
            let remove = calls.iter().position(|c| *c == format!("remove {name}"));
            assert!(stop.is_some() && stop < remove, "{calls:?}");
        }
        assert!(rt.list().await.unwrap().is_empty());
        // Again: nothing left, nothing done.
        assert_eq!(remove_containers(rt, None).await.0, []);
    }

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

    #[test]
    fn cgroup_folders_are_found_in_every_hierarchy_and_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        for d in [
            "memory/wharf/abcd",
            "pids/wharf/abcd",
            "unified/wharf/abcd",
            "cpu",
        ] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink("memory", root.path().join("mem")).unwrap();
        let found = cgroup_dirs(root.path(), "wharf/abcd");
        let names: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["memory/wharf/abcd", "pids/wharf/abcd", "unified/wharf/abcd"]
        );

        let v2 = tempfile::tempdir().unwrap();
        fs::create_dir_all(v2.path().join("wharf/abcd")).unwrap();
        assert_eq!(
            cgroup_dirs(v2.path(), "wharf/abcd"),
            [v2.path().join("wharf/abcd")]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/run/my\040dir\134x"), r"/run/my dir\x");
        assert_eq!(unescape(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn a_folder_without_mounts_is_removed_and_its_mounts_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("run");
        fs::create_dir_all(root.join("containers/web/rootfs")).unwrap();
        assert!(mounts_under(&root).unwrap().is_empty());
        let mut removed = Vec::new();
        remove_tree(&root, true, &mut removed).unwrap();
        assert!(!root.exists());
        assert!(removed.is_empty());
        // `/proc` is a mount under `/`.
        let mounts = mounts_under(Path::new("/")).unwrap();
        assert!(
            mounts
                .iter()
                .any(|(p, t)| p == Path::new("/proc") && t == "proc"),
            "{mounts:?}"
        );
    }
}
