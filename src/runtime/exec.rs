//! `wharf exec NAME -- CMD...`: a command run in a running container, confined exactly
//! as the container's own processes are: its cgroup, its namespaces (mount, UTS, IPC,
//! network, pid, cgroup), its user, capabilities, `no_new_privs`, seccomp filter,
//! environment and root. The `exec` healthcheck runs through it too.
//!
//! It stands alone rather than asking the agent: the endpoint stays read-only, and the
//! container's files under `--state` and `--run-dir` say all it needs (root only, as the
//! state root is). A small synchronous program, like the shim:
//! 1. the container's init is pinned with a pidfd and checked to be the recorded one;
//! 2. this process joins the container's cgroup (before anything of the container can
//!    see it, while the host's cgroup files are still in its view), then all of the
//!    init's namespaces at once (`setns` on the pidfd);
//! 3. it takes the container's identity itself (user, capabilities, `no_new_privs`,
//!    seccomp: [`Identity::confine`]), then forks: the child is born in the container's
//!    pid namespace already as confined as the container's own processes, in a session
//!    of its own, its streams pipes that this process relays (the caller's terminal and
//!    descriptors never reach the container), and execs. This process, never visible
//!    inside, waits and returns the child's status. It is not dumpable meanwhile.
//!
//! The child dies with this process (a parent-death signal), so a healthcheck that
//! kills its helper on a timeout ends the command too.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, getppid, pipe2, setsid, ForkResult, Pid};
use oci_spec::runtime::Spec;

use super::identity::{exec_program, Identity, Never, EXEC_FAILED};
use super::linux::{cgroups, fork_single_threaded, pidfd_open, proc};
use super::records::{ExitRecord, Paths, Record, Running, ShimConfig};
use crate::state;

/// The exit status of a command that could not be run (Docker's, and the shell's).
pub const CANNOT_RUN: i32 = 126;
/// The exit status of a command that was not found.
pub const NOT_FOUND: i32 = 127;

/// What to run, where.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub name: String,
    pub state_root: PathBuf,
    pub run_root: PathBuf,
    pub args: Vec<String>,
    /// `KEY=VALUE`, over the container's environment.
    pub env: Vec<String>,
    /// Instead of the container's working directory.
    pub workdir: Option<String>,
    /// `uid[:gid]` or `name[:group]` (the container's `/etc/passwd` and `/etc/group`),
    /// instead of the container's user.
    pub user: Option<String>,
    /// `name` is a runtime instance, entered as given; else the container's serving
    /// instance is found ([`super::instance::current_on_disk`]). A health probe names
    /// the exact instance: during a StartFirst update, the new version.
    pub exact: bool,
}

/// Why the command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0:?} is not a container name")]
    BadName(String),
    #[error("no container {0}")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("read {what} of container {name}: {message}")]
    Read {
        name: String,
        what: &'static str,
        message: String,
    },
    #[error("enter container {name}: {what}: {source}")]
    Enter {
        name: String,
        what: &'static str,
        source: nix::errno::Errno,
    },
    #[error("--env {0:?}: expected KEY=VALUE")]
    BadEnv(String),
}

/// Runs the request; the command's exit status (128 + the signal if one ended it), or
/// [`CANNOT_RUN`] / [`NOT_FOUND`] with the reason on stderr. Must be called from a
/// single-threaded process.
pub fn run(req: &ExecRequest) -> Result<i32, ExecError> {
    let name = req.name.as_str();
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ExecError::BadName(req.name.clone()));
    }
    if let Some(bad) = req
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(ExecError::BadEnv(bad.clone()));
    }
    // The instance that serves it (`web.alt` after a StartFirst update).
    let instance = if req.exact {
        name.to_owned()
    } else {
        super::instance::current_on_disk(&req.state_root, name)
    };
    let paths = Paths::new(&req.state_root, &req.run_root, &instance);
    let read = |what: &'static str, message: String| ExecError::Read {
        name: name.to_owned(),
        what,
        message,
    };
    // Nothing the caller left open is passed on to the command.
    super::linux::cloexec_from(3).map_err(|e| read("descriptors", e.to_string()))?;
    let record = Record::load(&paths.record())
        .map_err(|e| read("record", e.to_string()))?
        .ok_or_else(|| ExecError::NotFound(name.to_owned()))?;
    let running: Running = state::read_json(&paths.state())
        .map_err(|e| read("state", e.to_string()))?
        .filter(|r: &Running| r.run == record.run)
        .ok_or_else(|| ExecError::NotRunning(name.to_owned()))?;
    let exited: Option<ExitRecord> = state::read_json(&paths.exit()).ok().flatten();
    if exited.is_some_and(|e| e.run == running.run) {
        return Err(ExecError::NotRunning(name.to_owned()));
    }
    // Pinned first, then checked: the pidfd names one process for good, so a pid reused
    // after the check cannot be entered by mistake.
    let init = pidfd_open(running.pid).map_err(|_| ExecError::NotRunning(name.to_owned()))?;
    if !proc::is_alive(running.pid, running.start_time) {
        return Err(ExecError::NotRunning(name.to_owned()));
    }
    let spec = Spec::load(paths.config()).map_err(|e| read("config.json", e.to_string()))?;
    let shim: ShimConfig = state::read_json(&paths.shim_config())
        .map_err(|e| read("shim.json", e.to_string()))?
        .ok_or_else(|| read("shim.json", "missing".into()))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| read("config.json", "no process".into()))?;

    let enter = |what: &'static str| {
        move |source| ExecError::Enter {
            name: name.to_owned(),
            what,
            source,
        }
    };
    if !cgroups::Layout::host().exists(&shim.cgroup) {
        return Err(ExecError::NotRunning(name.to_owned()));
    }
    let cg = cgroups::ensure(&shim.cgroup).map_err(|e| read("cgroup", e.to_string()))?;
    // On cgroup v2 the init's own cgroup: a privileged container (systemd,
    // docker-in-docker) may have moved it below its cgroup and enabled controllers
    // there, and a cgroup with controllers enabled takes no process of its own.
    let files = match cgroups::unified_dir(&cg) {
        Some(dir) => {
            let text = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid))
                .map_err(|e| read("the init's cgroup", e.to_string()))?;
            vec![init_cgroup_dir(&dir, &shim.cgroup, &text).join("cgroup.procs")]
        }
        None => cgroups::self_join_files(&cg),
    };
    cgroups::join_self(&files).map_err(|e| read("cgroup", e))?;
    nix::sys::prctl::set_dumpable(false).map_err(enter("not dumpable"))?;
    setns(
        &init,
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(enter("join its namespaces"))?;
    drop(init);

    // Inside its root now: its own passwd and group files name its users.
    let (uid, gid, gids, home) = match &req.user {
        Some(user) => {
            let passwd = read_small(Path::new("/etc/passwd"));
            let group = read_small(Path::new("/etc/group"));
            match super::process::resolve_user(user, &passwd, &group) {
                Ok(u) => (u.uid, u.gid, u.additional_gids, Some(u.home)),
                Err(e) => {
                    eprintln!("wharf exec: {e}");
                    return Ok(CANNOT_RUN);
                }
            }
        }
        None => {
            let u = process.user();
            let gids = u.additional_gids().clone().unwrap_or_default();
            (u.uid(), u.gid(), gids, shim.home.clone())
        }
    };
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) || req.user.is_some() {
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={}", home.as_deref().unwrap_or("/")));
    }
    for kv in &req.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    let cwd = req
        .workdir
        .as_deref()
        .map(PathBuf::from)
        .unwrap_or_else(|| process.cwd().clone());

    // Confined before the fork: this process, outside the container's pid namespace
    // (nothing inside can see it), takes the container's identity first, so the
    // command's process is born as confined as the container's own and is never a
    // privileged process something in the container could ptrace.
    // The container's bounding set; effective and permitted for root only, as for its
    // init (`spec::capabilities`): `--user 0` in a container of a non-root user gets
    // them, a non-root `--user` has none.
    let capabilities = process.capabilities().clone().map(|mut c| {
        let held = if uid == 0 {
            c.bounding().clone()
        } else {
            Some(Default::default())
        };
        c.set_effective(held.clone());
        c.set_permitted(held);
        c
    });
    let identity = Identity {
        uid,
        gid,
        additional_gids: &gids,
        capabilities: capabilities.as_ref(),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        nofile_soft: shim.nofile_soft,
        seccomp: shim.seccomp,
    };
    if let Err(e) = identity.confine(&cwd) {
        eprintln!("wharf exec: {e}");
        return Ok(CANNOT_RUN);
    }
    // The command's streams are pipes this process relays: the caller's terminal, or
    // any other descriptor of the caller, never reaches the container.
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(enter("pipe"));
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
    match fork_single_threaded().map_err(enter("fork"))? {
        ForkResult::Child => {
            drop((in_w, out_r, err_r));
            let message = match command(&in_r, &out_w, &err_w, &req.args, &env) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = writeln!(std::io::stderr(), "wharf exec: {message}");
            let lower = message.to_lowercase();
            let code = if message.starts_with(EXEC_FAILED)
                && (lower.contains("not found") || lower.contains("no such file"))
            {
                NOT_FOUND
            } else {
                CANNOT_RUN
            };
            super::linux::exit_now(code)
        }
        ForkResult::Parent { child } => {
            drop((in_r, out_w, err_w));
            relay(in_w, out_r, err_r, child).map_err(enter("wait"))
        }
    }
}

/// The command's process: its streams, a session of its own, death with the helper,
/// then the exec.
fn command(
    stdin: &OwnedFd,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    args: &[String],
    env: &[String],
) -> Result<Never, String> {
    dup2_stdin(stdin).map_err(|e| format!("dup2 stdin: {e}"))?;
    dup2_stdout(stdout).map_err(|e| format!("dup2 stdout: {e}"))?;
    dup2_stderr(stderr).map_err(|e| format!("dup2 stderr: {e}"))?;
    // No controlling terminal: the container's `/dev/tty` must not be the caller's.
    setsid().map_err(|e| format!("setsid: {e}"))?;
    // It dies with the helper (a probe's timeout kills the helper). If the helper is
    // already gone, this process was given to the container's init: its parent, seen
    // from inside the pid namespace, is then no longer 0 (outside).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("parent-death signal: {e}"))?;
    if getppid().as_raw() != 0 {
        return Err("wharf exec ended before the command started".into());
    }
    exec_program(args, env)
}

/// Copies the caller's stdin to the command, and the command's stdout and stderr to the
/// caller's, until the command has exited and its outputs ended, or [`DRAIN`] after its
/// exit (what it left running in the background may hold them open for ever: the
/// command's exit decides, as for an exec healthcheck); returns its exit status (128 +
/// the signal that ended it).
/// One thread (a process that joined another pid namespace cannot make threads): the
/// command's stdin is written without blocking, what it has not taken yet kept, so a
/// command that writes much before it reads never deadlocks against us.
fn relay(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd, child: Pid) -> nix::Result<i32> {
    let mut to_command = Some(File::from(stdin));
    if let Some(f) = &to_command {
        let _ = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    let mut caller_in = Some(std::io::stdin());
    let mut pending: Vec<u8> = Vec::new();
    let mut outputs = [
        (
            File::from(stdout),
            Box::new(std::io::stdout()) as Box<dyn Write>,
        ),
        (
            File::from(stderr),
            Box::new(std::io::stderr()) as Box<dyn Write>,
        ),
    ];
    let mut open = [true, true];
    let mut buf = [0u8; 16 * 1024];
    let mut exited: Option<(i32, Instant)> = None;
    loop {
        if exited.is_none() {
            exited = match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Some((code, Instant::now())),
                Ok(WaitStatus::Signaled(_, sig, _)) => Some((128 + sig as i32, Instant::now())),
                Ok(_) | Err(nix::errno::Errno::EINTR) => None,
                Err(e) => return Err(e),
            };
        }
        match exited {
            Some((code, _)) if !open.iter().any(|o| *o) => return Ok(code),
            Some((code, at)) if at.elapsed() >= DRAIN => return Ok(code),
            _ => {}
        }
        // What to wait for: each open output; the caller's stdin while nothing is
        // pending; the command's stdin while something is.
        let mut fds: Vec<PollFd> = Vec::new();
        for (i, (f, _)) in outputs.iter().enumerate() {
            if open[i] {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
        }
        let stdin_at = match (&caller_in, pending.is_empty()) {
            (Some(s), true) => {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let command_at = match (&to_command, pending.is_empty()) {
            (Some(f), false) => {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        // Woken at least every 50 ms to see whether the command has exited.
        if poll(&mut fds, PollTimeout::from(50u8)).is_err() {
            continue; // EINTR
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut k = 0;
        for (i, (from, to)) in outputs.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            let is_ready = ready[k];
            k += 1;
            if !is_ready {
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => open[i] = false,
                Ok(n) => {
                    let _ = to.write_all(&buf[..n]);
                    let _ = to.flush();
                }
            }
        }
        if stdin_at.is_some_and(|at| ready[at]) {
            match caller_in.as_mut().map(|s| s.read(&mut buf)) {
                Some(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
                // The caller's input ended: so does the command's.
                _ => {
                    caller_in = None;
                    to_command = None;
                }
            }
        }
        if command_at.is_some_and(|at| ready[at]) {
            match to_command.as_mut().map(|f| f.write(&pending)) {
                Some(Ok(n)) => {
                    pending.drain(..n);
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The command closed its stdin: nothing more goes to it.
                _ => {
                    to_command = None;
                    caller_in = None;
                    pending.clear();
                }
            }
        }
        if caller_in.is_none() && pending.is_empty() {
            to_command = None;
        }
    }
}

/// The v2 folder of the init's cgroup, from its `/proc/PID/cgroup` (`0::/path`), when it
/// is the container's cgroup (`container_dir`, at `container_path`) or one below it;
/// else the container's.
fn init_cgroup_dir(container_dir: &Path, container_path: &str, proc_cgroup: &str) -> PathBuf {
    let own = format!("/{}", container_path.trim_matches('/'));
    let Some(root) = container_dir
        .to_str()
        .and_then(|d| d.strip_suffix(own.as_str()))
    else {
        return container_dir.to_owned();
    };
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| *p == own || p.starts_with(&format!("{own}/")))
        .filter(|p| !p.split('/').any(|c| c == ".."))
        .map_or_else(
            || container_dir.to_owned(),
            |p| PathBuf::from(format!("{root}{p}")),
        )
}

/// How long output is still relayed after the command exited.
const DRAIN: Duration = Duration::from_millis(100);

/// A small file of the container's, read as text: a regular file only (a FIFO would
/// block), at most 1 MiB. Missing or odd: empty, as an image without the file.
fn read_small(path: &Path) -> String {
    const LIMIT: u64 = 1 << 20;
    let Ok(file) = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return String::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = file.take(LIMIT).read_to_string(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inits_own_cgroup_is_joined_when_it_is_below_the_containers() {
        let dir = Path::new("/sys/fs/cgroup/wharf/i1/web");
        let path = "wharf/i1/web";
        assert_eq!(
            init_cgroup_dir(dir, path, "0::/wharf/i1/web/init.scope\n"),
            Path::new("/sys/fs/cgroup/wharf/i1/web/init.scope")
        );
        assert_eq!(init_cgroup_dir(dir, path, "0::/wharf/i1/web\n"), dir);
        // Anywhere else (moved out: drift), or a path that climbs: the container's.
        assert_eq!(init_cgroup_dir(dir, path, "0::/user.slice\n"), dir);
        assert_eq!(init_cgroup_dir(dir, path, "0::/wharf/i1/webx\n"), dir);
        assert_eq!(
            init_cgroup_dir(dir, path, "0::/wharf/i1/web/../../x\n"),
            dir
        );
        assert_eq!(init_cgroup_dir(dir, path, "12:pids:/x\n"), dir);
    }
}
