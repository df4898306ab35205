//! `wharf prober`: the one process per agent that runs `exec` health probes.
//!
//! Why a process of its own: an `exec` probe started as `wharf exec` costs a spawn from
//! the agent (a large, threaded process) and the start of the wharf binary (its dynamic
//! relocations alone are ~3 ms of CPU), per probe. This process is started once, stays
//! small and single-threaded, and for each probe only forks: the child closes what it
//! inherited and runs [`crate::runtime::exec::run`], exactly what `wharf exec` runs
//! (the container's cgroup, namespaces, user, capabilities, seccomp), with its output
//! on a pipe. Single-threaded is what makes the fork safe (see
//! [`fork_single_threaded`]).
//!
//! Protocol (stdin and stdout, one JSON object per line): [`Request`] in, [`Response`]
//! out, matched by `id`, answered in any order. The prober enforces each probe's
//! timeout (the helper is killed; its command dies with it by its parent-death signal)
//! and keeps at most [`MAX_OUTPUT`] bytes of output. It ends when its stdin closes
//! (the agent is gone), killing the probes still running; it also dies with the agent
//! (`PR_SET_PDEATHSIG`).

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::probe::MAX_OUTPUT;
use crate::runtime::exec::{ExecRequest, CANNOT_RUN};
use crate::runtime::linux::{close_from, exit_now, fork_single_threaded, pidfd_open};

/// One `exec` probe to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: u64,
    /// The runtime instance (`web`, `web.alt`).
    pub name: String,
    pub cmd: Vec<String>,
    pub timeout_ms: u64,
}

/// What one probe did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub id: u64,
    /// The command's exit status (128 + N for a signal); `None` when it timed out or
    /// could not be run.
    pub code: Option<i32>,
    /// At most [`MAX_OUTPUT`] bytes of its stdout and stderr, or why it failed.
    pub output: String,
    pub timed_out: bool,
}

/// The longest request line taken (a command line is far shorter).
const MAX_REQUEST: usize = 64 * 1024;
/// How long output is still read after the command ended: something it left running
/// in the background may hold the pipe open for ever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

struct Running {
    id: u64,
    pid: Pid,
    pidfd: OwnedFd,
    output: Option<OwnedFd>,
    kept: Vec<u8>,
    deadline: Instant,
    ended: Option<(Instant, i32)>,
    timed_out: bool,
}

/// Runs the prober until its stdin closes. Must be called from a single-threaded
/// process (it forks).
pub fn main(state_root: PathBuf, run_root: PathBuf) -> i32 {
    // With the agent gone, nothing is left to answer.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() == Pid::from_raw(1) {
        return 0;
    }
    // Read and written through their descriptors, never through std's locked handles:
    // a lock held at a fork stays locked in the child for ever (the helper's relay
    // uses std's stdio).
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut stdin_open = true;
    loop {
        if !stdin_open && running.is_empty() {
            return 0;
        }
        let now = Instant::now();
        // (A helper killed at its deadline is waited for on its pidfd.)
        let next = running
            .values()
            .filter_map(|r| match r.ended {
                Some((at, _)) => Some(at + DRAIN_AFTER_EXIT),
                None => (!r.timed_out).then_some(r.deadline),
            })
            .min();
        let wait = next.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.saturating_duration_since(now)).unwrap_or(PollTimeout::MAX)
        });
        let ids: Vec<u64> = running.keys().copied().collect();
        let mut fds = Vec::with_capacity(1 + 2 * ids.len());
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        for id in &ids {
            let r = &running[id];
            if r.ended.is_none() {
                fds.push(PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN));
            }
            if let Some(o) = &r.output {
                fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
        let ready = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect::<Vec<_>>();
        drop(fds);
        let mut slot = 0;
        if stdin_open {
            if ready[0] {
                let mut requests = Vec::new();
                stdin_open = read_requests(&stdin, &mut input, &mut requests);
                for req in requests {
                    match start(&req, &state_root, &run_root) {
                        Ok(r) => {
                            running.insert(req.id, r);
                        }
                        Err(e) => answer(failed(req.id, format!("start the probe: {e}"))),
                    }
                }
            }
            slot = 1;
        }
        for id in &ids {
            let r = running.get_mut(id).expect("listed");
            if r.ended.is_none() {
                if ready[slot] {
                    reap(r);
                }
                slot += 1;
            }
            if r.output.is_some() {
                if ready[slot] {
                    read_output(r);
                }
                slot += 1;
            }
        }
        let now = Instant::now();
        for r in running.values_mut() {
            if r.ended.is_none() && now >= r.deadline && !r.timed_out {
                r.timed_out = true;
                let _ = kill(r.pid, Signal::SIGKILL);
            }
        }
        let done: Vec<u64> = running
            .values()
            .filter(|r| match r.ended {
                Some((at, _)) => r.output.is_none() || now >= at + DRAIN_AFTER_EXIT,
                None => false,
            })
            .map(|r| r.id)
            .collect();
        for id in done {
            let r = running.remove(&id).expect("listed");
            answer(response(r));
        }
        if !stdin_open {
            for r in running.values_mut() {
                let _ = kill(r.pid, Signal::SIGKILL);
            }
        }
    }
}

/// Reads what stdin has into `input`, moves every whole request line to `requests`;
/// false at its end.
fn read_requests(stdin: &impl AsFd, input: &mut Vec<u8>, requests: &mut Vec<Request>) -> bool {
    let mut buf = [0u8; 8192];
    let n = match nix::unistd::read(stdin, &mut buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return true,
        Err(_) => return false,
    };
    input.extend_from_slice(&buf[..n]);
    while let Some(end) = input.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = input.drain(..=end).collect();
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => requests.push(req),
            Err(e) => eprintln!("wharf prober: bad request: {e}"),
        }
    }
    if input.len() > MAX_REQUEST {
        eprintln!("wharf prober: request longer than {MAX_REQUEST} bytes, dropped");
        input.clear();
    }
    true
}

/// Forks the probe's helper: it closes every descriptor it inherited but its output
/// pipe, then runs the command in the container as `wharf exec` does.
fn start(
    req: &Request,
    state_root: &std::path::Path,
    run_root: &std::path::Path,
) -> std::io::Result<Running> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let null = std::fs::File::open("/dev/null")?;
    let exec = ExecRequest {
        name: req.name.clone(),
        state_root: state_root.to_owned(),
        run_root: run_root.to_owned(),
        args: req.cmd.clone(),
        env: Vec::new(),
        workdir: None,
        user: None,
        exact: true,
    };
    match fork_single_threaded()? {
        ForkResult::Child => {
            // Nothing of the prober (its requests, other probes' pipes and pidfds) may
            // be reachable from inside a container.
            let ok = nix::unistd::dup2_stdin(&null).is_ok()
                && nix::unistd::dup2_stdout(&write).is_ok()
                && nix::unistd::dup2_stderr(&write).is_ok()
                && close_from(3).is_ok()
                && nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok();
            if !ok {
                exit_now(CANNOT_RUN);
            }
            let code = match crate::runtime::exec::run(&exec) {
                Ok(code) => code,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "wharf exec: {e}");
                    CANNOT_RUN
                }
            };
            exit_now(code)
        }
        ForkResult::Parent { child } => {
            drop(write);
            let pidfd = pidfd_open(child.as_raw())?;
            Ok(Running {
                id: req.id,
                pid: child,
                pidfd,
                output: Some(read),
                kept: Vec::new(),
                deadline: Instant::now() + Duration::from_millis(req.timeout_ms),
                ended: None,
                timed_out: false,
            })
        }
    }
}

fn reap(r: &mut Running) {
    let code = match waitpid(r.pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => return,
    };
    r.ended = Some((Instant::now(), code));
}

/// Keeps up to [`MAX_OUTPUT`] bytes; the rest is read and dropped, so the writer never
/// blocks on a full pipe.
fn read_output(r: &mut Running) {
    let Some(fd) = &r.output else { return };
    let mut buf = [0u8; 4096];
    match nix::unistd::read(fd, &mut buf) {
        Ok(0) => r.output = None,
        Ok(n) => {
            let room = MAX_OUTPUT.saturating_sub(r.kept.len());
            r.kept.extend_from_slice(&buf[..n.min(room)]);
        }
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
        Err(_) => r.output = None,
    }
}

fn response(r: Running) -> Response {
    Response {
        id: r.id,
        code: r.ended.map(|(_, c)| c).filter(|_| !r.timed_out),
        output: String::from_utf8_lossy(&r.kept).into_owned(),
        timed_out: r.timed_out,
    }
}

fn failed(id: u64, output: String) -> Response {
    Response {
        id,
        code: None,
        output,
        timed_out: false,
    }
}

fn answer(r: Response) {
    let mut line = serde_json::to_vec(&r).unwrap_or_default();
    line.push(b'\n');
    let stdout = std::io::stdout();
    let mut rest = &line[..];
    while !rest.is_empty() {
        match nix::unistd::write(stdout.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            // The agent reading it is gone: stdin closes next, and the loop ends.
            Err(_) => return,
        }
    }
}
