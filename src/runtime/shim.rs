//! The per-container shim (`wharf shim --bundle DIR`): a small synchronous program, no
//! tokio, one per container, like conmon or containerd-shim.
//!
//! It creates the container (namespaces, cgroup, rootfs, user, exec), is the parent of
//! its init, copies its stdout and stderr into the log file, reaps it and records the
//! exit status atomically. Because the shim (not the agent) is the parent, the agent
//! can stop, crash or restart without touching any container, log line or exit code.
//!
//! Protocol with the agent: one JSON [`StartReport`] line on stdout, then stdout is
//! closed. Protocol with the child: a close-on-exec pipe that carries an error message
//! if setup or exec fails, or reaches EOF when `execve` succeeded (the classic self-pipe
//! trick runc and crun use). On cgroup v2 the child is born in its cgroup
//! (`clone3(CLONE_INTO_CGROUP)`); on v1 it moves itself there first thing
//! ([`cgroups::join_self`]); either is cheaper than the parent moving it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    dup2_stderr, dup2_stdin, dup2_stdout, pipe2, sethostname, setsid, ForkResult, Pid,
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::identity::{Identity, Never, EXEC_FAILED};
use super::linux::resolve::Root;
use super::linux::{cgroups, fork_into_cgroup, fork_single_threaded, proc, rootfs};
use super::records::{now, ExitRecord, Running, ShimConfig, StartReport};
use crate::state;

/// Runs the shim for the bundle in `bundle`; returns the shim's exit code.
pub fn main(bundle: &Path) -> i32 {
    // A new session: signals to the agent's process group or terminal never reach us.
    let _ = setsid();
    let _ = nix::sys::prctl::set_name(c"wharf-shim");
    match run(bundle) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("wharf shim {}: {message}", bundle.display());
            // The two exec failures of `setup` (not found, execve refused) are the
            // image's and the manifest's: no retry helps.
            let permanent = message.starts_with(EXEC_FAILED);
            report(&StartReport::Failed { message, permanent });
            1
        }
    }
}

fn report(r: &StartReport) {
    let mut out = io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, r);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run(bundle: &Path) -> Result<(), String> {
    let spec =
        Spec::load(bundle.join("config.json")).map_err(|e| format!("load config.json: {e}"))?;
    let shim: ShimConfig = state::read_json(&bundle.join("shim.json"))
        .map_err(|e| format!("load shim.json: {e}"))?
        .ok_or("shim.json is missing")?;

    // Held as long as this process lives, which is as long as the container: the kernel
    // then tells the agent a volume is in use, whatever its status snapshot says. (The
    // child never drops its copy: dropping a Flock unlocks the shared open file; the child
    // leaves by execve, which closes it, or by _exit.)
    let _volumes_in_use = shim
        .volumes
        .iter()
        .map(|r| crate::volumes::VolumeStore::new(&r.state_root).hold(&r.name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // A cgroup left by an earlier run (its shim killed before removing it) would keep that
    // run's settings, on v2 its device program too: start from a fresh one.
    if cgroups::Layout::host().exists(&shim.cgroup) && cgroups::procs(&shim.cgroup).is_empty() {
        let _ = cgroups::remove(&shim.cgroup);
    }
    let cg = cgroups::ensure(&shim.cgroup).map_err(|e| e.to_string())?;
    cgroups::apply_limits(&cg, &shim.cgroup, &limits(&spec)).map_err(|e| e.to_string())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shim.log_path)
        .map_err(|e| format!("open log {}: {e}", shim.log_path.display()))?;

    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;

    // The child is pid 1 of a new pid namespace; the shim itself stays outside. On v2 it
    // is born in its cgroup; otherwise (v1, or a kernel without clone3 or
    // CLONE_INTO_CGROUP) it moves itself there first thing.
    let new_pid_ns = has_namespace(&spec, LinuxNamespaceType::Pid);
    let born_in_cgroup = match cgroups::unified_dir(&cg) {
        Some(dir) => {
            let dir = File::open(&dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
            Some(fork_into_cgroup(&dir, new_pid_ns))
        }
        None => None,
    };
    let (forked, join_cgroup) = match born_in_cgroup {
        Some(Ok(forked)) => (forked, Vec::new()),
        // Refused before a child existed: the kernel lacks it (or a seccomp filter hides
        // it). Any other error is the cgroup's (full, removed...): report it as is.
        Some(Err(e))
            if !matches!(
                e,
                Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL | Errno::EPERM
            ) =>
        {
            return Err(format!("start in cgroup {}: {e}", shim.cgroup));
        }
        _ => {
            // Not before a clone3 attempt: a clone3 that fails after taking pid 1 of a
            // pid namespace unshared here would leave it unable to take another.
            if new_pid_ns {
                unshare(CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("unshare pid namespace: {e}"))?;
            }
            let forked = fork_single_threaded().map_err(|e| format!("fork: {e}"))?;
            (forked, cgroups::self_join_files(&cg))
        }
    };
    match forked {
        ForkResult::Child => {
            drop((out_r, status_r, log));
            let err = child(&spec, &shim, &join_cgroup, &out_w);
            let mut status = File::from(status_w);
            let _ = status.write_all(err.as_bytes());
            drop(status);
            super::linux::exit_now(127)
        }
        ForkResult::Parent { child } => {
            drop((out_w, status_w));
            parent(&shim, child, log, out_r, status_r)
        }
    }
}

fn parent(
    shim: &ShimConfig,
    child: Pid,
    mut log: File,
    out_r: OwnedFd,
    status_r: OwnedFd,
) -> Result<(), String> {
    let pid = child.as_raw();
    let mut setup_error = String::new();
    let _ = File::from(status_r).read_to_string(&mut setup_error);
    let start_time = proc::start_time(pid).unwrap_or(0);
    if !setup_error.is_empty() {
        let _ = waitpid(child, None);
        finish(shim, 127, None, Some(setup_error.clone()));
        return Err(setup_error);
    }

    let me = std::process::id() as i32;
    let running = Running {
        run: shim.run,
        pid,
        start_time,
        started_at: now(),
        started_at_ms: super::records::now_ms(),
        shim_pid: me,
        shim_start_time: proc::start_time(me).unwrap_or(0),
    };
    if let Err(e) = state::write_json(&shim.state_path, &running) {
        eprintln!("record state: {e}");
    }
    report(&StartReport::Started(running));
    // The agent may go away at any time; nothing more is written to it.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = dup2_stdout(&null);
    }

    copy_output(File::from(out_r), &mut log);

    let (code, signal) = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("waitpid {pid}: {e}");
                break (255, None);
            }
        }
    };
    let _ = log.sync_all();
    // The state file stays: the exit record (same run) supersedes it, and once the exit
    // is recorded the agent may start the next run, whose state file an unlink here
    // could remove.
    finish(shim, code, signal, None);
    Ok(())
}

/// Copies the container's output into the log until every writer has closed the pipe
/// (the init and all its descendants: they die with the pid namespace).
fn copy_output(mut out: File, log: &mut File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = log.write_all(&buf[..n]) {
                    eprintln!("write log: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("read container output: {e}");
                break;
            }
        }
    }
}

/// Removes the container's cgroup, then records its exit. In that order: once the exit is
/// recorded the agent may start the container again, in a cgroup of the same path, which
/// a late removal would pull out from under it.
fn finish(shim: &ShimConfig, exit_code: i32, signal: Option<i32>, error: Option<String>) {
    // Read before the cgroup is removed: a SIGKILL with an OOM kill recorded in the
    // container's memory cgroup is the kernel enforcing its limit.
    let oom_killed = signal == Some(9) && cgroups::oom_kills(&shim.cgroup) > 0;
    if let Err(e) = cgroups::remove(&shim.cgroup) {
        eprintln!("{e}");
    }
    // The last container of an instance to end on its own (its agent stopped or gone)
    // takes the instance's parent cgroups with it: nobody else would.
    cgroups::remove_parents_of(&shim.cgroup);
    let record = ExitRecord {
        run: shim.run,
        exit_code,
        signal,
        finished_at: now(),
        finished_at_ms: super::records::now_ms(),
        error,
        oom_killed,
        message: None,
    };
    if let Err(e) = state::write_json(&shim.exit_path, &record) {
        eprintln!("record exit: {e}");
    }
}

/// The resource limits of the OCI config's `linux.resources`.
fn limits(spec: &Spec) -> cgroups::Limits {
    let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return cgroups::Limits::default();
    };
    cgroups::Limits {
        memory: r.memory().as_ref().and_then(|m| m.limit()),
        cpu_quota: r
            .cpu()
            .as_ref()
            .and_then(|c| Some((c.quota()?, c.period().unwrap_or(100_000)))),
        pids: r.pids().as_ref().map(|p| p.limit()),
        devices: r
            .devices()
            .iter()
            .flatten()
            .map(|d| cgroups::DeviceRule {
                allow: d.allow(),
                typ: d
                    .typ()
                    .map(|t| t.as_str().chars().next().unwrap_or('a'))
                    .unwrap_or('a'),
                major: d.major(),
                minor: d.minor(),
                access: d.access().clone().unwrap_or_else(|| "rwm".into()),
            })
            .collect(),
    }
}

fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == typ))
}

/// The path of a namespace to join rather than create (OCI `linux.namespaces[].path`).
fn namespace_path(spec: &Spec, typ: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == typ))
        .and_then(|n| n.path().clone())
}

/// The child: waits to be placed in the cgroup, builds the container and execs. Returns
/// only on failure, with the message for the agent.
fn child(spec: &Spec, shim: &ShimConfig, join_cgroup: &[PathBuf], out_w: &OwnedFd) -> String {
    // Before anything else: the cgroup namespace unshared below takes the cgroup this
    // process is in as its root, and every process the container makes is accounted.
    if let Err(e) = cgroups::join_self(join_cgroup) {
        return e;
    }
    match setup(spec, shim, out_w) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn setup(spec: &Spec, shim: &ShimConfig, out_w: &OwnedFd) -> Result<Never, String> {
    let process = spec.process().as_ref().ok_or("config has no process")?;
    let root = spec.root().as_ref().ok_or("config has no root")?;
    let rootfs = root.path().clone();

    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Join a prepared network namespace (netns-first: its interfaces are already
    // configured) before unsharing the others, as runc orders setns before unshare.
    let join_net = namespace_path(spec, LinuxNamespaceType::Network);
    if let Some(path) = &join_net {
        let ns = File::open(path)
            .map_err(|e| format!("open network namespace {}: {e}", path.display()))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace {}: {e}", path.display()))?;
    }
    let mut flags = CloneFlags::empty();
    for (typ, flag) in [
        (LinuxNamespaceType::Mount, CloneFlags::CLONE_NEWNS),
        (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS),
        (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC),
        (LinuxNamespaceType::Network, CloneFlags::CLONE_NEWNET),
        (LinuxNamespaceType::Cgroup, CloneFlags::CLONE_NEWCGROUP),
    ] {
        if has_namespace(spec, typ) && !(flag == CloneFlags::CLONE_NEWNET && join_net.is_some()) {
            flags |= flag;
        }
    }
    unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;

    let e = |e: rootfs::RootfsError| e.to_string();
    rootfs::make_root_slave().map_err(e)?;
    fs::create_dir_all(&rootfs).map_err(|err| format!("create {}: {err}", rootfs.display()))?;
    rootfs::mount_overlay(&shim.lower, &shim.upper, &shim.work, &rootfs).map_err(e)?;
    // Before the volumes hide the image's content at their mount points.
    for req in &shim.volumes {
        crate::volumes::populate::populate(req, &rootfs).map_err(|e| e.to_string())?;
    }
    // Every mount target is resolved against this descriptor of the root, never by path.
    let root_fd = Root::open(&rootfs).map_err(|err| format!("open {}: {err}", rootfs.display()))?;
    let mut dev_populated = false;
    for m in spec.mounts().iter().flatten() {
        rootfs::mount_one(&root_fd, m).map_err(e)?;
        // The template's /dev tmpfs only, once: a manifest's mount on /dev is the
        // container's own (and may hold anything).
        if m.destination() == Path::new("/dev") && !dev_populated {
            dev_populated = true;
            let extra = spec.linux().as_ref().and_then(|l| l.devices().clone());
            rootfs::populate_dev(&root_fd, extra.as_deref().unwrap_or_default()).map_err(e)?;
        }
    }
    if has_namespace(spec, LinuxNamespaceType::Network) && join_net.is_none() {
        bring_up_loopback();
    }
    rootfs::pivot(&rootfs).map_err(e)?;
    if let Some(linux) = spec.linux() {
        let null = rootfs::null_device().map_err(e)?;
        rootfs::mask_paths(linux.masked_paths().as_deref().unwrap_or_default(), &null)
            .map_err(e)?;
        rootfs::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default()).map_err(e)?;
    }
    if root.readonly().unwrap_or(false) {
        rootfs::remount_readonly(Path::new("/"), false).map_err(e)?;
    }
    if let Some(hostname) = spec.hostname() {
        sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
    }

    let cwd = process.cwd();
    // Docker creates a missing working directory (before dropping privileges).
    fs::create_dir_all(cwd).map_err(|e| format!("create working dir {}: {e}", cwd.display()))?;
    let user = process.user();
    let additional_gids = user.additional_gids().clone().unwrap_or_default();
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", shim.home.as_deref().unwrap_or("/")));
    }
    // Standard streams: stdin from /dev/null, stdout and stderr into the log pipe.
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    dup2_stdin(&null).map_err(|e| format!("dup2 stdin: {e}"))?;
    dup2_stdout(out_w).map_err(|e| format!("dup2 stdout: {e}"))?;
    dup2_stderr(out_w).map_err(|e| format!("dup2 stderr: {e}"))?;
    let identity = Identity {
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: &additional_gids,
        capabilities: process.capabilities().as_ref(),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        nofile_soft: shim.nofile_soft,
        seccomp: shim.seccomp,
    };
    identity.exec(cwd, &process.args().clone().unwrap_or_default(), &env)
}

/// `lo` starts down in a new network namespace; containers expect it up (Docker and
/// runc's netns setup bring it up too).
fn bring_up_loopback() {
    if let Err(e) = super::linux::loopback_up() {
        eprintln!("bring up lo: {e}");
    }
}
