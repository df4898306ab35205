//! Container cgroups through `cgroups-rs`, on cgroup v1 (hybrid, as on our machines)
//! and v2 (most users). Every container gets `wharf/<instance>/<name>`, so a second
//! agent on the host never touches our cgroups and leftovers are found by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::{hierarchies, Cgroup};

/// Errors of cgroup management, each naming the cgroup path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("create cgroup {path}: {source}")]
    Create {
        path: String,
        source: cgroups_rs::error::Error,
    },
    #[error("set {what} of cgroup {path}: {source}")]
    SetLimit {
        path: String,
        what: String,
        source: cgroups_rs::error::Error,
    },
    #[error("cgroup {path} has no {controller} controller on this host")]
    MissingController { path: String, controller: String },
    /// `/sys/fs/cgroup` holds no cgroup filesystem at all: typically an agent started
    /// with `ip netns exec`, which mounts a fresh sysfs in a private mount namespace.
    #[error("no cgroup filesystem is mounted at /sys/fs/cgroup (an agent started with `ip netns exec` sees a fresh /sys without one; start it with `nsenter --net=/run/netns/NAME` instead, or mount cgroup2 there)")]
    NotMounted,
    #[error("device rules of cgroup {path}: {message}")]
    Devices { path: String, message: String },
    #[error("remove cgroup {path}: {source}")]
    Remove {
        path: String,
        source: cgroups_rs::error::Error,
    },
}

/// The relative cgroup path of a container.
pub fn container_path(instance: &str, name: &str) -> String {
    format!("wharf/{instance}/{name}")
}

/// Creates (or reuses) the cgroup at `path` in every mounted controller.
///
/// The shared parents (`wharf`, `wharf/<instance>`) are removed when their last
/// container goes (see [`remove_parents_if_empty`]), possibly by another agent between
/// two of the `mkdir`s `cgroups-rs` makes here; it only logs such a failure, so this
/// checks the result and tries again.
pub fn ensure(path: &str) -> Result<Cgroup, CgroupError> {
    if !cgroup_fs_mounted(std::path::Path::new("/sys/fs/cgroup")) {
        return Err(CgroupError::NotMounted);
    }
    let mut attempts = 0;
    loop {
        let cg = Cgroup::new(hierarchies::auto(), path).map_err(|source| CgroupError::Create {
            path: path.to_owned(),
            source,
        })?;
        attempts += 1;
        // In *every* hierarchy: cgroups-rs' `exists` is true if any one has it.
        let complete = cg.subsystems().iter().all(|s| s.to_controller().exists());
        if complete || attempts == 10 {
            return Ok(cg);
        }
    }
}

/// The files through which a single-threaded process moves *itself* into the cgroup
/// ([`join_self`]): `tasks` in each v1 hierarchy, `cgroup.procs` on v2.
///
/// Why not the parent writing the child's pid to `cgroup.procs`, as runc does: that takes
/// the kernel's global `cgroup_threadgroup_rwsem` for writing, and the first such write
/// after a quiet spell waits for an RCU grace period (~10 ms here, a third of a
/// container start). A v1 `tasks` write of `0` moves only the calling thread and skips
/// that lock (`cgroup_procs_write_start`: "If we migrate a single thread, we don't care
/// about threadgroup stability"); for a single-threaded process that is the whole
/// process. v2 has no such path (its `cgroup.procs` takes the lock either way): there
/// the shim forks the child straight into the cgroup ([`super::fork_into_cgroup`]) and
/// this is the fallback for kernels before 5.7.
pub fn self_join_files(cg: &Cgroup) -> Vec<PathBuf> {
    match unified_dir(cg) {
        Some(dir) => vec![dir.join("cgroup.procs")],
        None => cg
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join("tasks"))
            .collect(),
    }
}

/// The cgroup's folder on a v2 host (what `clone3(CLONE_INTO_CGROUP)` takes); `None`
/// on v1.
pub fn unified_dir(cg: &Cgroup) -> Option<PathBuf> {
    if !cg.v2() {
        return None;
    }
    cg.subsystems()
        .first()
        .map(|s| s.to_controller().path().to_path_buf())
}

/// Moves the calling process, which must be single-threaded, into the cgroup whose
/// [`self_join_files`] these are.
pub fn join_self(files: &[PathBuf]) -> Result<(), String> {
    for file in files {
        std::fs::write(file, "0").map_err(|e| format!("join cgroup {}: {e}", file.display()))?;
    }
    Ok(())
}

/// One device cgroup rule: allow or deny `typ` (`a`, `c`, `b`) `major:minor` (`None`:
/// any) with `access` (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub typ: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// Resource limits of a container (from the OCI config's `linux.resources`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Device access rules, in order (v1 devices controller).
    pub devices: Vec<DeviceRule>,
    /// Hard memory limit in bytes.
    pub memory: Option<i64>,
    /// CFS quota and period in microseconds (`cpus: 1.5` is 150000 per 100000).
    pub cpu_quota: Option<(i64, u64)>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
}

/// Writes `limits` into the cgroup (before any process of the container runs in it).
/// On cgroup v1 the memory+swap limit is set to twice the memory limit, Docker's default
/// for `--memory` without `--memory-swap`.
pub fn apply_limits(cg: &Cgroup, path: &str, limits: &Limits) -> Result<(), CgroupError> {
    use cgroups_rs::{cpu::CpuController, memory::MemController, pid::PidController, MaxValue};
    let err = |what: &str, source: cgroups_rs::error::Error| CgroupError::SetLimit {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    };
    if let Some(bytes) = limits.memory {
        let mem: &MemController = cg.controller_of().ok_or_else(|| missing(path, "memory"))?;
        mem.set_limit(bytes).map_err(|e| err("memory limit", e))?;
        // Only v1 has a separate memory+swap knob; a missing one (no swap accounting)
        // leaves swap as the host has it.
        if !cg.v2() {
            let _ = mem.set_memswap_limit(bytes.saturating_mul(2));
        }
    }
    if let Some((quota, period)) = limits.cpu_quota {
        let cpu: &CpuController = cg.controller_of().ok_or_else(|| missing(path, "cpu"))?;
        cpu.set_cfs_quota_and_period(Some(quota), Some(period))
            .map_err(|e| err("cpu quota", e))?;
    }
    if !limits.devices.is_empty() {
        if cg.v2() {
            let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(path);
            super::attach_device_program(&dir, &super::devices_bpf::program(&limits.devices))
                .map_err(|e| CgroupError::Devices {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        } else {
            apply_device_rules(cg, path, &limits.devices)?;
        }
    }
    if let Some(n) = limits.pids {
        let pids: &PidController = cg.controller_of().ok_or_else(|| missing(path, "pids"))?;
        pids.set_pid_max(MaxValue::Value(n))
            .map_err(|e| err("pids limit", e))?;
    }
    Ok(())
}

/// Writes the device rules into the v1 devices controller. (On v2 they become an eBPF
/// program attached to the cgroup: `devices_bpf`.)
fn apply_device_rules(cg: &Cgroup, path: &str, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    use cgroups_rs::devices::{DevicePermissions, DeviceType, DevicesController};
    let devices: &DevicesController = cg.controller_of().ok_or_else(|| missing(path, "devices"))?;
    for r in rules {
        let typ = match r.typ {
            'c' => DeviceType::Char,
            'b' => DeviceType::Block,
            _ => DeviceType::All,
        };
        let access: Vec<DevicePermissions> = r
            .access
            .chars()
            .filter_map(DevicePermissions::from_char)
            .collect();
        let (major, minor) = (r.major.unwrap_or(-1), r.minor.unwrap_or(-1));
        if r.allow {
            devices.allow_device(typ, major, minor, &access)
        } else {
            devices.deny_device(typ, major, minor, &access)
        }
        .map_err(|source| CgroupError::SetLimit {
            path: path.to_owned(),
            what: format!("device rule {r:?}"),
            source,
        })?;
    }
    Ok(())
}

/// Whether `dir` is a cgroup2 mount or holds v1 hierarchies (the hybrid layout has
/// both): `statfs` magic of the directory, or of a folder in it.
fn cgroup_fs_mounted(dir: &std::path::Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    let is_cgroup = |p: &std::path::Path| {
        statfs(p).is_ok_and(|s| {
            let t = s.filesystem_type();
            t == CGROUP2_SUPER_MAGIC || t == CGROUP_SUPER_MAGIC
        })
    };
    is_cgroup(dir)
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && is_cgroup(&e.path()))
        })
}

fn missing(path: &str, controller: &str) -> CgroupError {
    CgroupError::MissingController {
        path: path.to_owned(),
        controller: controller.to_owned(),
    }
}

/// How many processes of the cgroup the kernel's OOM killer has killed (0 when unknown).
pub fn oom_kills(path: &str) -> u64 {
    Layout::host().oom_kills(path)
}

/// Where a cgroup's files are: the host's hierarchy, or a fake root in tests (so the v2
/// reading is tested on these v1 machines).
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    v2: bool,
}

impl Layout {
    /// The host's `/sys/fs/cgroup`, v1 or v2 as mounted (looked up once per process:
    /// it is read for every running container at every relist).
    pub fn host() -> Self {
        static HOST: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
        HOST.get_or_init(|| Layout {
            root: PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT),
            v2: hierarchies::is_cgroup2_unified_mode(),
        })
        .clone()
    }

    /// A hierarchy mounted at `root`: unified (v2) or one folder per controller (v1).
    pub fn at(root: &Path, v2: bool) -> Self {
        Layout {
            root: root.to_owned(),
            v2,
        }
    }

    fn file(&self, controller: &str, path: &str, name: &str) -> PathBuf {
        if self.v2 {
            self.root.join(path).join(name)
        } else {
            self.root.join(controller).join(path).join(name)
        }
    }

    fn read(&self, controller: &str, path: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(controller, path, name)).ok()
    }

    /// `oom_kill` of `memory.oom_control` (v1) or `memory.events` (v2); 0 when unknown.
    pub fn oom_kills(&self, path: &str) -> u64 {
        let name = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read("memory", path, name)
            .and_then(|text| keyed(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// What the container uses now; `None` when its cgroup is gone. Memory is the working
    /// set, as kubelet and `docker stats` report it: usage minus inactive file cache,
    /// which the kernel reclaims before it would OOM-kill.
    pub fn usage(&self, path: &str) -> Option<crate::runtime::Usage> {
        let (usage, inactive_key, cpu_seconds) = if self.v2 {
            let cpu = self.read("cpu", path, "cpu.stat")?;
            (
                self.read("memory", path, "memory.current")?,
                "inactive_file",
                keyed(&cpu, "usage_usec").unwrap_or(0) as f64 / 1e6,
            )
        } else {
            let cpu = self.read("cpuacct", path, "cpuacct.usage")?;
            (
                self.read("memory", path, "memory.usage_in_bytes")?,
                "total_inactive_file",
                cpu.trim().parse::<u64>().unwrap_or(0) as f64 / 1e9,
            )
        };
        let usage: u64 = usage.trim().parse().ok()?;
        let inactive = self
            .read("memory", path, "memory.stat")
            .and_then(|t| keyed(&t, inactive_key))
            .unwrap_or(0);
        Some(crate::runtime::Usage {
            memory_bytes: usage.saturating_sub(inactive),
            cpu_seconds,
            pids: self
                .read("pids", path, "pids.current")
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
        })
    }

    /// Whether the cgroup at `path` exists (in the memory hierarchy on v1): one `stat`.
    pub fn exists(&self, path: &str) -> bool {
        self.file("memory", path, "").is_dir()
    }

    /// `rmdir` of the cgroup at `path` in the unified hierarchy (v2) or in each
    /// controller's (v1); the kernel refuses where it has processes or children.
    fn remove_dirs(&self, path: &str) {
        if self.v2 {
            let _ = std::fs::remove_dir(self.root.join(path));
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            // `cpu` and `cpuacct` are symlinks to `cpu,cpuacct`: visit real folders once.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(entry.path().join(path));
            }
        }
    }

    /// Names of the container cgroups under `wharf/<instance>`, read from the memory (v1)
    /// or unified (v2) hierarchy, so orphans can be found even without state files.
    pub fn list_containers(&self, instance: &str) -> Vec<String> {
        list_dirs(&self.file("memory", &instance_path(instance), ""))
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes the cgroup at `path`; not found is success. A cgroup cannot be removed while
/// a process is still in it (the kernel answers EBUSY while the last one is being
/// reaped), so this retries briefly.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    let cg = Cgroup::load(hierarchies::auto(), path);
    if !cg.exists() {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..50 {
        match cg.delete() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last {
        Some(source) => Err(CgroupError::Remove {
            path: path.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}

/// Removes `wharf/<instance>`, then `wharf`, where no container cgroup is left in them,
/// so the last container of the last agent leaves nothing behind. One attempt each,
/// errors ignored: a parent another container still uses is simply kept.
pub fn remove_parents_if_empty(instance: &str) {
    remove_if_empty(&instance_path(instance));
    remove_if_empty("wharf");
}

/// [`remove_parents_if_empty`] for the instance of the container cgroup `path`
/// (`wharf/<instance>/<name>`); anything else is left alone.
pub fn remove_parents_of(path: &str) {
    let mut parts = path.split('/');
    if let (Some("wharf"), Some(instance), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        remove_parents_if_empty(instance);
    }
}

/// Removes the cgroup at `path` in every hierarchy where it has neither a process nor a
/// child cgroup; one attempt, errors ignored. A plain `rmdir`, never cgroups-rs' `delete`:
/// on v1 that removes child cgroups recursively, and would take away a sibling
/// container's cgroup created a moment ago, before its process joined it.
fn remove_if_empty(path: &str) {
    Layout::host().remove_dirs(path);
}

/// The relative path of this instance's parent cgroup.
pub fn instance_path(instance: &str) -> String {
    format!("wharf/{instance}")
}

/// The pids in the cgroup at `path` (empty when it does not exist).
pub fn procs(path: &str) -> Vec<i32> {
    let cg = Cgroup::load(hierarchies::auto(), path);
    if !cg.exists() {
        return Vec::new();
    }
    cg.procs().into_iter().map(|p| p.pid as i32).collect()
}

/// Whether process `pid` is still in the container cgroup `path` (`wharf/<instance>/
/// <name>`, or a cgroup below it) of at least one hierarchy. Out of all of them, it was moved out and its
/// cgroup removed. (Out of some only is not told: which hierarchies a container is
/// placed in depends on the host's layout, and a wrong guess would stop a healthy
/// container.) Unknown (the process gone) counts as in: nothing is stopped on a guess.
pub fn in_cgroup(pid: i32, path: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return true;
    };
    in_cgroup_text(&text, path)
}

fn in_cgroup_text(text: &str, path: &str) -> bool {
    let suffix = format!("/{path}");
    let mut lines = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .peekable();
    if lines.peek().is_none() {
        return true;
    }
    // Its own cgroup or one below it: a privileged container (systemd as its init,
    // docker-in-docker) may make sub-cgroups and move its init into one.
    let below = format!("{suffix}/");
    lines.any(|at| at.trim_end_matches('/').ends_with(&suffix) || at.contains(&below))
}

/// Names of this instance's container cgroups on the host.
pub fn list_containers(instance: &str) -> Vec<String> {
    Layout::host().list_containers(instance)
}

fn list_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_process_is_in_its_cgroup_while_one_hierarchy_still_holds_it() {
        let path = "wharf/3fa29c01/web";
        let hybrid = "12:pids:/wharf/3fa29c01/web\n4:memory:/wharf/3fa29c01/web\n1:name=systemd:/user.slice\n0::/user.slice\n";
        assert!(in_cgroup_text(hybrid, path));
        let v2_only = "12:pids:/\n0::/wharf/3fa29c01/web\n";
        assert!(
            in_cgroup_text(v2_only, path),
            "placed in the unified one only"
        );
        let out = "12:pids:/\n4:memory:/\n0::/user.slice\n";
        assert!(!in_cgroup_text(out, path), "moved out of every one");
        assert!(
            !in_cgroup_text("0::/wharf/3fa29c01/web2\n", path),
            "another container"
        );
        assert!(in_cgroup_text("", path), "unknown counts as in");
        let nested = "0::/wharf/3fa29c01/web/init.scope\n";
        assert!(
            in_cgroup_text(nested, path),
            "a sub-cgroup it made is still its own"
        );
    }

    use super::*;

    #[test]
    fn a_folder_without_any_cgroup_mount_is_told_apart() {
        assert!(cgroup_fs_mounted(std::path::Path::new("/sys/fs/cgroup")));
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("memory")).unwrap();
        assert!(!cgroup_fs_mounted(empty.path()));
        assert!(CgroupError::NotMounted
            .to_string()
            .contains("ip netns exec"));
    }
    use std::fs;

    /// A cgroup v2 hierarchy at a temp dir, for `cgroups-rs` (which otherwise only knows
    /// `/sys/fs/cgroup`): the controllers it would find on a v2 host.
    #[derive(Debug)]
    struct FakeV2(PathBuf);

    impl cgroups_rs::Hierarchy for FakeV2 {
        fn subsystems(&self) -> Vec<cgroups_rs::Subsystem> {
            use cgroups_rs::{cpu::CpuController, memory::MemController, pid::PidController};
            vec![
                cgroups_rs::Subsystem::Mem(MemController::new(self.0.clone(), true)),
                cgroups_rs::Subsystem::Cpu(CpuController::new(self.0.clone(), true)),
                cgroups_rs::Subsystem::Pid(PidController::new(self.0.clone(), true)),
            ]
        }
        fn root(&self) -> PathBuf {
            self.0.clone()
        }
        fn root_control_group(&self) -> Cgroup {
            Cgroup::load(Box::new(FakeV2(self.0.clone())), "")
        }
        fn parent_control_group(&self, path: &str) -> Cgroup {
            let parent = Path::new(path).parent().unwrap_or(Path::new(""));
            Cgroup::load(
                Box::new(FakeV2(self.0.clone())),
                parent.to_string_lossy().as_ref(),
            )
        }
        fn v2(&self) -> bool {
            true
        }
    }

    #[test]
    fn v2_limits_are_written_to_the_unified_files() {
        let root = tempfile::tempdir().unwrap();
        let path = container_path("abcd", "web");
        let cg = Cgroup::new(Box::new(FakeV2(root.path().to_owned())), path.as_str()).unwrap();
        // What the kernel puts in a new v2 cgroup (cgroups-rs reads it to keep the period).
        fs::write(root.path().join(&path).join("cpu.max"), "max 100000\n").unwrap();
        apply_limits(
            &cg,
            &path,
            &Limits {
                memory: Some(64 << 20),
                cpu_quota: Some((150_000, 100_000)),
                pids: Some(100),
                devices: Vec::new(),
            },
        )
        .unwrap();
        let dir = root.path().join(&path);
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap().trim().to_owned();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "100");
        assert!(!dir.join("memory.memsw.limit_in_bytes").exists(), "v1 only");
        assert!(
            !dir.join("memory.swap.max").exists(),
            "swap left as the host has it"
        );
    }

    #[test]
    fn v2_usage_oom_kills_and_listing_read_the_unified_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wharf/abcd/web");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.current"), "10485760\n").unwrap();
        fs::write(
            dir.join("memory.stat"),
            "anon 1\ninactive_file 2097152\nactive_file 3\n",
        )
        .unwrap();
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        fs::write(dir.join("pids.current"), "3\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        let layout = Layout::at(root.path(), true);
        let u = layout.usage("wharf/abcd/web").unwrap();
        assert_eq!(u.memory_bytes, 8 << 20);
        assert_eq!(u.cpu_seconds, 2.5);
        assert_eq!(u.pids, 3);
        assert_eq!(layout.oom_kills("wharf/abcd/web"), 1);
        assert_eq!(layout.list_containers("abcd"), ["web"]);
        assert!(layout.usage("wharf/abcd/gone").is_none());
    }

    #[test]
    fn removing_an_empty_parent_keeps_a_child_cgroup() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "pids"] {
            fs::create_dir_all(root.path().join(c).join("wharf/abcd/web")).unwrap();
            fs::create_dir_all(root.path().join(c).join("wharf/gone")).unwrap();
        }
        let layout = Layout::at(root.path(), false);
        layout.remove_dirs("wharf/abcd");
        layout.remove_dirs("wharf/gone");
        for c in ["memory", "pids"] {
            assert!(root.path().join(c).join("wharf/abcd/web").is_dir(), "{c}");
            assert!(!root.path().join(c).join("wharf/gone").exists(), "{c}");
        }
    }

    #[test]
    fn v1_usage_reads_one_folder_per_controller() {
        let root = tempfile::tempdir().unwrap();
        let p = "wharf/abcd/web";
        for c in ["memory", "cpuacct", "pids"] {
            fs::create_dir_all(root.path().join(c).join(p)).unwrap();
        }
        let w =
            |c: &str, f: &str, v: &str| fs::write(root.path().join(c).join(p).join(f), v).unwrap();
        w("memory", "memory.usage_in_bytes", "5000\n");
        w(
            "memory",
            "memory.stat",
            "cache 10\ninactive_file 7\ntotal_inactive_file 1000\n",
        );
        w(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        w("cpuacct", "cpuacct.usage", "1500000000\n");
        w("pids", "pids.current", "7\n");
        let layout = Layout::at(root.path(), false);
        let u = layout.usage(p).unwrap();
        assert_eq!((u.memory_bytes, u.cpu_seconds, u.pids), (4000, 1.5, 7));
        assert_eq!(layout.oom_kills(p), 2);
        assert_eq!(layout.list_containers("abcd"), ["web"]);
    }
}
