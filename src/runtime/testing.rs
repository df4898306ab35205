//! A recording fake of [`Runtime`] and the conformance suite that both the fake and the
//! real [`LinuxRuntime`](super::LinuxRuntime) must pass (style.md item 14, after
//! containerd's snapshotter test suite), so the fake the reconciler's tests rely on
//! cannot drift from the real thing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::records::now;
use super::{
    ExitRecord, Observed, ObservedState, ProcessPlan, Running, Runtime, RuntimeError, StartRequest,
};

/// An in-memory runtime that records every call. A command whose name starts with
/// `missing` fails to start, as a command absent from the image does; so does a
/// `missing…` user.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    containers: Mutex<BTreeMap<String, Observed>>,
    calls: Mutex<Vec<String>>,
    requests: Mutex<Vec<StartRequest>>,
    next_pid: Mutex<i32>,
}

impl FakeRuntime {
    /// The calls so far: `start NAME ARGS…`, `stop NAME SIGNAL`, `remove NAME`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// The latest start request for `name`.
    pub fn last_request(&self, name: &str) -> Option<StartRequest> {
        let requests = self.requests.lock().expect("requests");
        requests.iter().rev().find(|r| r.name == name).cloned()
    }

    /// Makes the container's process exit with `code`, as if it ended on its own.
    pub fn exit(&self, name: &str, code: i32) {
        let mut c = self.containers.lock().expect("containers");
        if let Some(o) = c.get_mut(name) {
            let run = match &o.state {
                ObservedState::Running(r) => r.run,
                _ => 0,
            };
            o.state = ObservedState::Exited(ExitRecord {
                run,
                exit_code: code,
                signal: None,
                finished_at: now(),
                finished_at_ms: super::records::now_ms(),
                error: None,
                oom_killed: false,
                message: None,
            });
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
}

impl Runtime for FakeRuntime {
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .expect("containers")
            .values()
            .cloned()
            .collect())
    }

    async fn start(&self, req: StartRequest) -> Result<Running, RuntimeError> {
        self.record(format!("start {} {}", req.name, req.process.args.join(" ")));
        self.requests.lock().expect("requests").push(req.clone());
        let program = req.process.args.first().cloned().unwrap_or_default();
        if req.process.user.starts_with("missing") {
            return Err(RuntimeError::Unrunnable(format!(
                "unable to find user {}: no matching entries in passwd file",
                req.process.user
            )));
        }
        if program.starts_with("flaky") {
            return Err(RuntimeError::StartFailed(format!(
                "mount {program}: no such file or directory"
            )));
        }
        let mut containers = self.containers.lock().expect("containers");
        let previous = containers.get(&req.name).filter(|_| !req.fresh);
        // Only a run that had started is restarted (a failed start is not a run).
        let restart_count =
            previous.map_or(0, |o| o.restart_count + u32::from(o.started_at.is_some()));
        let last_state = match previous.map(|o| (&o.state, o.started_at)) {
            Some((ObservedState::Exited(e), started_at)) if e.error.is_none() => {
                Some(super::LastState {
                    exit_code: e.exit_code,
                    signal: e.signal,
                    oom_killed: e.oom_killed,
                    started_at,
                    finished_at: e.finished_at,
                    message: e.message.clone(),
                })
            }
            _ => None,
        };
        let run = containers.get(&req.name).map_or(0, run_of) + 1;
        let mut observed = Observed {
            name: req.name.clone(),
            meta: Some(req.meta),
            refused: None,
            state: ObservedState::Lost,
            last_state,
            restart_count,
            started_at: None,
            log_path: "/dev/null".into(),
            previous_log: None,
            usage: None,
            promoted: false,
        };
        if program.starts_with("missing") {
            // Like the real runtime: the container exists, failed to start.
            let message = format!("exec: \"{program}\": executable file not found in $PATH");
            observed.state = ObservedState::Exited(ExitRecord {
                run,
                exit_code: 127,
                signal: None,
                finished_at: now(),
                finished_at_ms: super::records::now_ms(),
                error: Some(message.clone()),
                oom_killed: false,
                message: None,
            });
            containers.insert(req.name.clone(), observed);
            return Err(RuntimeError::Unrunnable(message));
        }
        let mut next = self.next_pid.lock().expect("pid");
        *next += 1;
        let running = Running {
            run,
            pid: 1000 + *next,
            start_time: 1,
            started_at: now(),
            started_at_ms: super::records::now_ms(),
            shim_pid: 0,
            shim_start_time: 0,
        };
        observed.state = ObservedState::Running(running);
        observed.started_at = Some(running.started_at);
        containers.insert(req.name.clone(), observed);
        Ok(running)
    }

    async fn stop(&self, name: &str, signal: Signal, _grace: Duration) -> Result<(), RuntimeError> {
        self.record(format!("stop {name} {signal}"));
        let mut c = self.containers.lock().expect("containers");
        if let Some(o) = c.get_mut(name) {
            if let ObservedState::Running(r) = o.state {
                // Like a pid 1 without a handler: the grace period ends in SIGKILL.
                o.state = ObservedState::Exited(ExitRecord {
                    run: r.run,
                    exit_code: 137,
                    signal: Some(9),
                    finished_at: now(),
                    finished_at_ms: super::records::now_ms(),
                    error: None,
                    oom_killed: false,
                    message: None,
                });
            }
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(format!("remove {name}"));
        self.containers.lock().expect("containers").remove(name);
        Ok(())
    }

    async fn remove_for_replace(&self, name: &str) -> Result<(), RuntimeError> {
        self.remove(name).await
    }

    async fn promote(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(format!("promote {name}"));
        match self.containers.lock().expect("containers").get_mut(name) {
            Some(o) => {
                o.promoted = true;
                Ok(())
            }
            None => Err(RuntimeError::Promote {
                name: name.to_owned(),
                message: "no such container".into(),
            }),
        }
    }
}

fn run_of(o: &Observed) -> u64 {
    match &o.state {
        ObservedState::Running(r) => r.run,
        ObservedState::Exited(e) => e.run,
        ObservedState::Lost => 0,
    }
}

/// A start request for the conformance suite; `layers` is the busybox rootfs the real
/// runtime needs (the fake ignores it).
pub fn request(name: &str, args: &[&str], layers: Vec<std::path::PathBuf>) -> StartRequest {
    StartRequest {
        name: name.to_owned(),
        hostname: name.to_owned(),
        process: ProcessPlan {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: "0:0".into(),
        },
        layers,
        read_only_rootfs: false,
        network: super::NetworkMode::Private,
        etc_files: Vec::new(),
        capabilities: super::process::resolve_capabilities(&[], &[]),
        limits: super::Limits::default(),
        privileged: false,
        mounts: Vec::new(),
        meta: super::ContainerMeta {
            source: format!("conformance/{name}"),
            ..Default::default()
        },
        fresh: true,
    }
}

/// The behaviour every [`Runtime`] must have. Panics with the broken rule. Uses
/// container names prefixed with `prefix`; removes them all at the end.
pub async fn conformance<R: Runtime>(rt: &R, prefix: &str, layers: Vec<std::path::PathBuf>) {
    let name = format!("{prefix}conf");
    let find = |list: Vec<Observed>, name: &str| list.into_iter().find(|o| o.name == name);

    // Starting reports the process, which list() then shows running, annotations kept.
    let running = rt
        .start(request(&name, &["sleep", "100"], layers.clone()))
        .await
        .expect("start");
    let o = find(rt.list().await.expect("list"), &name).expect("listed after start");
    assert_eq!(
        o.state,
        ObservedState::Running(running),
        "running after start"
    );
    assert_eq!(
        o.meta.as_ref().map(|m| m.source.as_str()),
        Some(format!("conformance/{name}").as_str()),
        "meta kept"
    );
    assert!(o.last_state.is_none(), "a first run has no last state");
    assert_eq!(o.restart_count, 0);

    // Stopping waits until it has exited; the exit is recorded.
    rt.stop(&name, Signal::SIGTERM, Duration::from_millis(200))
        .await
        .expect("stop");
    let o = find(rt.list().await.expect("list"), &name).expect("listed after stop");
    assert!(
        matches!(o.state, ObservedState::Exited(_)),
        "exited after stop: {o:?}"
    );
    rt.stop(&name, Signal::SIGTERM, Duration::ZERO)
        .await
        .expect("stopping a stopped container is success");

    // A restart (not fresh) counts; a new pid runs.
    let mut again = request(&name, &["sleep", "100"], layers.clone());
    again.fresh = false;
    let second = rt.start(again).await.expect("restart");
    let o = find(rt.list().await.expect("list"), &name).expect("listed after restart");
    assert_eq!(o.restart_count, 1, "restart counted");
    assert_eq!(o.state, ObservedState::Running(second));
    assert_eq!(
        o.last_state.as_ref().map(|l| (l.exit_code, l.signal)),
        Some((137, Some(9))),
        "the stopped run is the last state"
    );

    // Promotion is recorded and listed (it decides which instance serves after a
    // crash in the middle of an update).
    assert!(!o.promoted, "not promoted before promote()");
    rt.promote(&name).await.expect("promote");
    let o = find(rt.list().await.expect("list"), &name).expect("listed after promote");
    assert!(o.promoted, "promoted after promote()");

    // Remove kills and forgets; removing again, or an unknown name, is success.
    rt.remove(&name).await.expect("remove");
    assert!(
        find(rt.list().await.expect("list"), &name).is_none(),
        "gone after remove"
    );
    rt.remove(&name).await.expect("remove twice");
    rt.stop(&format!("{prefix}never"), Signal::SIGTERM, Duration::ZERO)
        .await
        .expect("stop of an unknown container");

    // A command that does not exist fails the start with Docker's message.
    let missing = format!("{prefix}missing");
    let err = rt
        .start(request(&missing, &["missing-command"], layers.clone()))
        .await
        .expect_err("a missing command must fail");
    assert!(
        matches!(&err, RuntimeError::Unrunnable(m) if m.contains("executable file not found")),
        "{err}"
    );
    // Listed as failed to start, not lost (lost is restarted even under `Never`); a
    // second failed start is no restart: it never ran.
    let o = find(rt.list().await.expect("list"), &missing).expect("a failed start is listed");
    assert!(
        matches!(&o.state, ObservedState::Exited(e) if e.error.is_some()),
        "{o:?}"
    );
    let mut again = request(&missing, &["missing-command"], layers.clone());
    again.fresh = false;
    rt.start(again).await.expect_err("still missing");
    let o = find(rt.list().await.expect("list"), &missing).expect("listed");
    assert_eq!(
        o.restart_count, 0,
        "a start that never ran is not a restart"
    );
    rt.remove(&missing).await.expect("remove failed container");

    // A user the image does not have fails the start before anything exists: nothing
    // is listed afterwards, so nothing is "replaced" again and again.
    let nouser = format!("{prefix}nouser");
    let mut req = request(&nouser, &["sleep", "60"], layers);
    req.process.user = "missing-user".into();
    let err = rt.start(req).await.expect_err("an unknown user must fail");
    assert!(
        matches!(&err, RuntimeError::Unrunnable(m) if m.contains("unable to find user missing-user")),
        "{err}"
    );
    let listed = rt.list().await.expect("list");
    assert!(
        listed.iter().all(|o| o.name != nouser),
        "a container that never started is listed"
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_fake_runtime_passes_the_conformance_suite() {
        super::conformance(&super::FakeRuntime::default(), "f", Vec::new()).await;
    }
}
