//! The built-in runtime: starts one `wharf shim` per container, reads their records,
//! signals and removes them. Roots are injected so tests run on temp dirs.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use std::str::FromStr;

use super::file_cache::FileCache;
use super::linux::{cgroups, proc};
use super::process::resolve_user;
use super::records::{
    now, ContainerMeta, ExitRecord, LastState, LogRange, Paths, Record, RecordError, RunSummary,
    Running, ShimConfig, StartReport,
};
use super::rootfs_files::read_from_layers;
use super::shim_watch::ShimWatch;
use super::spec::{self, ConfigInputs};
use super::{Observed, ObservedState, PreviousLog, Runtime, RuntimeError, StartRequest, Usage};
use crate::manifest::MountSpec;
use crate::state;
use crate::volumes::{populate, VolumeStore};

/// How old a container's usage figures may be. The relist runs every second (to notice
/// exits); reading four cgroup files per container each time (v1's `memory.stat` is
/// the costly one) was most of an idle agent's CPU. cAdvisor samples every 10 s too.
const USAGE_EVERY: Duration = Duration::from_secs(10);

/// How often a list checks every running container in `/proc` (alive, still in its
/// cgroup). In between, a container whose shim is watched and has not ended is known to
/// run without reading anything: reading `/proc` three times per container was most of
/// a list, and a list stands between a crash and its restart. The agent lists at least
/// every `agent::RELIST` (10 s), so an escape from the cgroup is still seen within that.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The Linux runtime of one agent instance.
#[derive(Debug, Clone)]
pub struct LinuxRuntime {
    state_root: PathBuf,
    run_root: PathBuf,
    instance: String,
    shim_exe: PathBuf,
    usage_cache: Arc<Mutex<UsageCache>>,
    /// The shims of the running containers of the last list, watched by pidfd.
    shims: ShimWatch,
    /// Records, states and exits as the last list parsed them.
    records: FileCache<Record>,
    states: FileCache<Running>,
    exits: FileCache<ExitRecord>,
    /// When a list last checked every running container in `/proc`.
    last_check: Arc<Mutex<Option<Instant>>>,
}

/// The last usage read per container: for which run (run, init pid, start time), when,
/// what.
type UsageCache = HashMap<String, ((u64, i32, u64), Instant, Usage)>;

impl LinuxRuntime {
    /// `state_root` and `run_root` are the agent's `--state` and `--run-dir`; `instance`
    /// tags kernel objects; `shim_exe` is the wharf binary to run as `wharf shim`.
    pub fn new(state_root: &Path, run_root: &Path, instance: &str, shim_exe: PathBuf) -> Self {
        LinuxRuntime {
            state_root: state_root.to_owned(),
            run_root: run_root.to_owned(),
            instance: instance.to_owned(),
            shim_exe,
            usage_cache: Arc::default(),
            shims: ShimWatch::default(),
            records: FileCache::default(),
            states: FileCache::default(),
            exits: FileCache::default(),
            last_check: Arc::default(),
        }
    }

    /// Resolves as soon as the shim of a container the last list saw running has ended:
    /// its container exited (and the exit is recorded), or the shim was killed. Time to
    /// list again.
    pub async fn shim_ended(&self) {
        self.shims.ended().await;
    }

    /// The usage of a running container, read from its cgroup at most every
    /// [`USAGE_EVERY`] (a new run, or a new container of the same name, reads at once).
    fn usage(&self, name: &str, running: &Running) -> Option<Usage> {
        let key = (running.run, running.pid, running.start_time);
        let mut cache = self.usage_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, at, u)) = cache.get(name) {
            if *k == key && at.elapsed() < USAGE_EVERY {
                return Some(*u);
            }
        }
        let u = cgroups::Layout::host().usage(&cgroups::container_path(&self.instance, name));
        match u {
            Some(u) => cache.insert(name.to_owned(), (key, Instant::now(), u)),
            None => cache.remove(name),
        };
        u
    }

    fn paths(&self, name: &str) -> Paths {
        Paths::new(&self.state_root, &self.run_root, name)
    }

    fn prepare(&self, req: &StartRequest) -> Result<(Paths, ShimConfig), RuntimeError> {
        let name = req.name.clone();
        let fail = |message: String| RuntimeError::Prepare {
            name: name.clone(),
            message,
        };
        // The user first: an image without it is a start failure that must leave nothing
        // on disk, or the half-made container is observed and "replaced" forever.
        let passwd = read_from_layers(&req.layers, "/etc/passwd").unwrap_or_default();
        let group = read_from_layers(&req.layers, "/etc/group").unwrap_or_default();
        let user =
            resolve_user(&req.process.user, &passwd, &group).map_err(RuntimeError::Unrunnable)?;
        let paths = self.paths(&req.name);
        let mut record: Record = if req.fresh {
            Record::default()
        } else {
            Record::load(&paths.record())
                .map_err(|e| fail(e.to_string()))?
                .unwrap_or_default()
        };
        if req.fresh {
            // A new container starts from a clean writable layer and an empty log.
            for p in [paths.upper(), paths.work()] {
                match fs::remove_dir_all(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fail(format!("remove {}: {e}", p.display()))),
                }
            }
            let _ = fs::remove_file(paths.log());
        } else {
            note_previous_run(&mut record, &paths);
        }
        record.run += 1;
        record.version = super::records::RECORD_VERSION;
        record.started_at = None;
        record.meta = Some(req.meta.clone());
        for p in [paths.upper(), paths.work(), paths.rootfs()] {
            fs::create_dir_all(&p).map_err(|e| fail(format!("create {}: {e}", p.display())))?;
        }
        if req.fresh {
            // The replaced container's log, or the one an earlier try of this create
            // already took over.
            let earlier = Record::load(&paths.record())
                .ok()
                .flatten()
                .and_then(|r| r.previous_log)
                .filter(|r| r.file == "previous.log");
            record.log_start = 0;
            record.previous_log = adopt_kept_log(&paths).or(earlier);
            if record.previous_log.is_none() {
                let _ = fs::remove_file(paths.previous_log());
            }
        }
        let _ = fs::remove_file(paths.exit());
        let _ = fs::remove_file(paths.state());
        // The intent first: a crash from here on leaves a record that says what this
        // container is, so the next agent finishes or undoes the start, never guesses.
        state::write_json(&paths.record(), &record).map_err(|e| fail(e.to_string()))?;

        let cgroup = cgroups::container_path(&self.instance, &req.name);
        // Processes left in its cgroup by a run that was lost (its shim died before it
        // recorded the start): ended first, so a start never runs beside them.
        let strays = cgroups::procs(&cgroup);
        if !strays.is_empty() {
            tracing::warn!(container = %req.name, ?strays, "ending processes a lost run left in its cgroup");
            for pid in strays {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cgroups::procs(&cgroup).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // /etc/hosts, /etc/hostname, /etc/resolv.conf: written before the start (so a plain
        // atomic write is fine), bind-mounted over the image's, rewritten in place later.
        let mut file_mounts = Vec::new();
        for (name, content) in &req.etc_files {
            if !matches!(name.as_str(), "hosts" | "hostname" | "resolv.conf") {
                return Err(fail(format!("unsupported /etc file {name:?}")));
            }
            let host = paths.etc_dir().join(name);
            state::atomic_write(&host, content.as_bytes())
                .map_err(|e| fail(format!("write {}: {e}", host.display())))?;
            file_mounts.push((host, PathBuf::from("/etc").join(name)));
        }
        // Named volumes: created on first use (implicitly `Retain`), filled from the
        // image by the shim before they are mounted.
        let volumes = VolumeStore::new(&self.state_root);
        let volume_data = |name: &str| volumes.ensure(name).map_err(|e| e.to_string());
        let mounted_volumes = req
            .mounts
            .iter()
            .filter_map(|m| match m {
                MountSpec::Volume { source, target, .. } => Some(populate::Request {
                    state_root: self.state_root.clone(),
                    name: source.clone(),
                    target: PathBuf::from(target),
                }),
                _ => None,
            })
            .collect();
        let config = spec::build(&ConfigInputs {
            hostname: req.hostname.clone(),
            process: req.process.clone(),
            user: user.clone(),
            rootfs: paths.rootfs(),
            read_only_rootfs: req.read_only_rootfs,
            capabilities: req.capabilities.clone(),
            limits: req.limits,
            network: req.network.clone(),
            file_mounts,
            user_mounts: req
                .mounts
                .iter()
                .map(|m| spec::user_mount(m, &volume_data))
                .collect::<Result<_, _>>()
                .map_err(RuntimeError::StartFailed)?,
            cgroup: cgroup.clone(),
            privileged: req.privileged,
            annotations: std::collections::HashMap::from([(
                "io.wharf.name".to_owned(),
                req.name.clone(),
            )]),
        })
        .map_err(|e| fail(format!("build OCI config: {e}")))?;
        state::write_json(&paths.config(), &config).map_err(|e| fail(e.to_string()))?;
        let shim = ShimConfig {
            name: req.name.clone(),
            run: record.run,
            lower: req.layers.clone(),
            upper: paths.upper(),
            work: paths.work(),
            log_path: paths.log(),
            exit_path: paths.exit(),
            state_path: paths.state(),
            cgroup,
            home: Some(user.home),
            volumes: mounted_volumes,
            seccomp: !req.privileged,
            nofile_soft: super::inherited_nofile(),
        };
        state::write_json(&paths.shim_config(), &shim).map_err(|e| fail(e.to_string()))?;
        crate::fault::point("container-start:record");
        Ok((paths, shim))
    }

    /// Spawns the shim and waits for its one-line report. Blocking.
    fn spawn_shim(&self, name: &str, paths: &Paths) -> Result<Running, RuntimeError> {
        let spawn_err = |source| RuntimeError::SpawnShim {
            name: name.to_owned(),
            source,
        };
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.shim_log())
            .map_err(spawn_err)?;
        // std's Command forks and immediately execs (no Rust code runs in the child),
        // which is safe from a multi-threaded process, unlike a bare fork.
        let mut child = Command::new(&self.shim_exe)
            .arg("shim")
            .arg("--bundle")
            .arg(&paths.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .env_remove("RUST_LOG")
            .env_remove(crate::fault::ENV)
            .spawn()
            .map_err(spawn_err)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        // The shim outlives this call; reap it whenever it ends so it never lingers as a
        // zombie while the agent runs. (After an agent restart, init reaps it.)
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        read.map_err(spawn_err)?;
        match serde_json::from_str::<StartReport>(line.trim()) {
            Ok(StartReport::Started(running)) => {
                crate::fault::point("container-start:shim");
                if let Ok(Some(mut record)) = Record::load(&paths.record()) {
                    record.started_at = Some(running.started_at);
                    record.push_history(RunSummary {
                        run: running.run,
                        started_at_ms: Some(running.started_at_ms),
                        finished_at_ms: None,
                        exit_code: None,
                    });
                    if let Err(e) = state::write_json(&paths.record(), &record) {
                        tracing::warn!(container = %name, error = %e, "record the start");
                    }
                }
                Ok(running)
            }
            Ok(StartReport::Failed {
                message,
                permanent: true,
            }) => Err(RuntimeError::Unrunnable(message)),
            Ok(StartReport::Failed { message, .. }) => Err(RuntimeError::StartFailed(message)),
            Err(_) => {
                let log = fs::read_to_string(paths.shim_log()).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no output").to_owned();
                Err(RuntimeError::StartFailed(format!(
                    "shim ended without a report: {last}"
                )))
            }
        }
    }

    /// Reads one container's observed state; `check` reads `/proc` even for a container
    /// whose watched shim lives (see [`CHECK_EVERY`]). Blocking.
    fn observe(&self, name: &str, check: bool) -> Observed {
        let paths = self.paths(name);
        let mut observed = Observed {
            name: name.to_owned(),
            meta: None,
            refused: None,
            state: ObservedState::Lost,
            last_state: None,
            restart_count: 0,
            started_at: None,
            log_path: paths.log(),
            previous_log: None,
            usage: None,
            promoted: paths.dir.join(super::instance::PROMOTED).exists(),
        };
        let record = match self.records.get(&paths.record(), Record::load) {
            Ok(Some(r)) => r,
            // A create that died before its record: lost, so the reconciler removes or
            // recreates it.
            Ok(None) => return observed,
            Err(e @ RecordError::UnknownVersion { .. }) => {
                observed.refused = Some(e.to_string());
                return observed;
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "unreadable record");
                return observed;
            }
        };
        observed.meta = record.meta.clone().or_else(|| {
            // Made by a wharf from before record versions.
            (record.version == 0)
                .then(|| config_annotations(&paths.config()))
                .flatten()
                .and_then(|a| ContainerMeta::from_annotations(&a))
        });
        let running: Option<Running> = self
            .states
            .get(&paths.state(), state::read_json)
            .ok()
            .flatten();
        let exit: Option<ExitRecord> = self
            .exits
            .get(&paths.exit(), state::read_json)
            .ok()
            .flatten();
        let state = match (running, exit) {
            (_, Some(exit)) if exit.run == record.run => ObservedState::Exited(exit),
            // Its shim lives (its pidfd says so): the init runs, or has just ended and
            // the shim is draining its output; either way running until the exit record.
            (Some(r), _) if r.run == record.run && !check && self.shims.alive(name, r.shim_pid) => {
                ObservedState::Running(r)
            }
            // The shim died (kill -9, OOM) while the init runs on: nobody reads its output
            // or will record its exit. Stopped and recorded here, so the loss is said and
            // the restart policy decides what comes next (containerd does the same when a
            // shim disconnects).
            (Some(r), _)
                if r.run == record.run
                    && r.shim_pid > 0
                    && !proc::is_alive(r.shim_pid, r.shim_start_time)
                    && proc::is_alive(r.pid, r.start_time) =>
            {
                match self.stop_orphan(name, &paths, &r) {
                    Some(exit) => ObservedState::Exited(exit),
                    None => ObservedState::Running(r),
                }
            }
            (Some(r), _)
                if r.run == record.run
                    && proc::is_alive(r.pid, r.start_time)
                    && !cgroups::in_cgroup(
                        r.pid,
                        &cgroups::container_path(&self.instance, name),
                    ) =>
            {
                match self.stop_escaped(name, &paths, &r) {
                    Some(exit) => ObservedState::Exited(exit),
                    None => ObservedState::Running(r),
                }
            }
            (Some(r), _) if r.run == record.run && proc::is_alive(r.pid, r.start_time) => {
                ObservedState::Running(r)
            }
            // The init has exited and its shim is still draining the log and writing the
            // exit record: not lost (that would restart a `Never` container); the next
            // relist sees the exit.
            (Some(r), _)
                if r.run == record.run
                    && r.shim_pid > 0
                    && proc::is_alive(r.shim_pid, r.shim_start_time) =>
            {
                ObservedState::Running(r)
            }
            _ => ObservedState::Lost,
        };
        observed.usage = match &state {
            ObservedState::Running(r) => self.usage(name, r),
            _ => None,
        };
        observed.state = state;
        observed.previous_log = record.previous_log.as_ref().and_then(|r| {
            let path = match r.file.as_str() {
                "container.log" => paths.log(),
                "previous.log" => paths.previous_log(),
                _ => return None,
            };
            Some(PreviousLog {
                path,
                start: r.start,
                end: r.end,
            })
        });
        observed.restart_count = record.restart_count;
        // An agent killed between the shim's report and noting it: the shim's own
        // record of the run says when it started.
        observed.started_at = record.started_at.or(match &observed.state {
            ObservedState::Running(r) if r.run == record.run => Some(r.started_at),
            _ => None,
        });
        observed.last_state = record.last_state;
        observed
    }

    /// Stops the init of a container whose shim is gone, and records the exit in its
    /// place. The init is SIGKILLed (the kernel then ends the rest of its pid namespace);
    /// its new parent (the host's init, or a subreaper) reaps it. `None` while it still
    /// lives (stuck in the kernel): nothing is recorded, so no second copy is started
    /// beside it; the next list tries again.
    fn stop_orphan(&self, name: &str, paths: &Paths, r: &Running) -> Option<ExitRecord> {
        tracing::warn!(container = %name, shim = r.shim_pid, pid = r.pid, "the container's shim is gone; stopping it");
        self.end_run(name, paths, r, format!(
            "its shim (pid {}) died, so its output could no longer be logged nor its exit recorded: wharf stopped it (SIGKILL); the restart policy applies",
            r.shim_pid
        ))
    }

    /// Stops a container whose init left its cgroup (moved out, the cgroup removed):
    /// its limits and accounting no longer hold, so it is not the container the
    /// manifest describes. Recorded as an exit with the reason; the restart policy
    /// decides what comes next. `None` while it still lives (see [`Self::stop_orphan`]).
    fn stop_escaped(&self, name: &str, paths: &Paths, r: &Running) -> Option<ExitRecord> {
        let cgroup = cgroups::container_path(&self.instance, name);
        tracing::warn!(container = %name, pid = r.pid, %cgroup, "the container's init left its cgroup; stopping it");
        self.end_run(name, paths, r, format!(
            "its init (pid {}) left its cgroup {cgroup} (moved out, or the cgroup removed), so its limits no longer held: wharf stopped it (SIGKILL); the restart policy applies",
            r.pid
        ))
    }

    /// SIGKILLs the run's init, waits for it to end, and records the exit with
    /// `message` (over the shim's own record, if its shim is alive to write one).
    fn end_run(
        &self,
        name: &str,
        paths: &Paths,
        r: &Running,
        message: String,
    ) -> Option<ExitRecord> {
        let _ = proc::signal_if_same(r.pid, r.start_time, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc::is_alive(r.pid, r.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if proc::is_alive(r.pid, r.start_time) {
            tracing::warn!(container = %name, pid = r.pid, "a container survives SIGKILL; trying again at the next list");
            return None;
        }
        // A live shim reaps the init and records the exit itself.
        let shim_alive = || r.shim_pid > 0 && proc::is_alive(r.shim_pid, r.shim_start_time);
        let recorded = || -> Option<ExitRecord> {
            let e: ExitRecord = state::read_json(&paths.exit()).ok().flatten()?;
            (e.run == r.run).then_some(e)
        };
        while recorded().is_none() && shim_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let cgroup = cgroups::container_path(&self.instance, name);
        if let Err(e) = cgroups::remove(&cgroup) {
            tracing::warn!(container = %name, error = %e, "remove the cgroup of a stopped container");
        }
        let record = ExitRecord {
            message: Some(message),
            ..recorded().unwrap_or(ExitRecord {
                run: r.run,
                exit_code: 128 + Signal::SIGKILL as i32,
                signal: Some(Signal::SIGKILL as i32),
                finished_at: now(),
                finished_at_ms: super::records::now_ms(),
                error: None,
                oom_killed: false,
                message: None,
            })
        };
        if let Err(e) = state::write_json(&paths.exit(), &record) {
            tracing::warn!(container = %name, error = %e, "record the exit of a stopped container");
        }
        Some(record)
    }

    /// Blocking stop: signal, grace, SIGKILL, then wait for the shim to record the exit
    /// and end.
    ///
    /// Also waits when the init has already died but its shim is still recording the
    /// exit: removing the container's folder under a shim writing `exit.json` fails with
    /// "Directory not empty" (seen in CI), and a shim that has not ended still holds
    /// its volumes' in-use locks.
    fn stop_blocking(
        &self,
        name: &str,
        signal: Signal,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let paths = self.paths(name);
        let Some(r): Option<Running> = state::read_json(&paths.state()).ok().flatten() else {
            return Ok(());
        };
        let fail = |message: String| RuntimeError::Stop {
            name: name.to_owned(),
            message,
        };
        let init_alive = || proc::is_alive(r.pid, r.start_time);
        // Records from before the shim recorded itself have no shim pid: the init alone.
        let shim_alive = || r.shim_pid > 0 && proc::is_alive(r.shim_pid, r.shim_start_time);
        if init_alive() {
            proc::signal_if_same(r.pid, r.start_time, signal)
                .map_err(|e| fail(format!("{signal}: {e}")))?;
            crate::fault::point("container-stop:signalled");
            let deadline = Instant::now() + grace;
            while init_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if init_alive() {
                proc::signal_if_same(r.pid, r.start_time, Signal::SIGKILL)
                    .map_err(|e| fail(format!("SIGKILL: {e}")))?;
            }
        }
        // The shim reaps the init, drains the log, removes the cgroup, records the exit
        // and ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match (init_alive(), shim_alive()) {
                (false, false) => return Ok(()),
                (true, _) if Instant::now() >= deadline => {
                    return Err(fail("still running after SIGKILL".into()))
                }
                (false, true) if Instant::now() >= deadline => {
                    return Err(fail(format!(
                        "its shim (pid {}) has not recorded the exit after 10s",
                        r.shim_pid
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Stops container `name` (its stop signal, its grace period, then SIGKILL) if its
    /// init is still `init` (pid, start time), recording `reason` for the run's
    /// `lastState.message`; its restart policy decides what comes next. For the health
    /// monitor.
    pub async fn stop_because(
        &self,
        name: &str,
        init: (i32, u64),
        reason: String,
    ) -> Result<(), RuntimeError> {
        let me = self.clone();
        let owned = name.to_owned();
        blocking(
            move || {
                let paths = me.paths(&owned);
                let Some(r): Option<Running> = state::read_json(&paths.state()).ok().flatten()
                else {
                    return Ok(());
                };
                let record = Record::load(&paths.record()).ok().flatten();
                let Some(meta) = record.as_ref().and_then(|rec| rec.meta.clone()) else {
                    return Ok(());
                };
                if (r.pid, r.start_time) != init || record.is_some_and(|rec| rec.run != r.run) {
                    return Ok(()); // another run by now: not the one found unhealthy
                }
                let signal = Signal::from_str(&meta.stop_signal).unwrap_or(Signal::SIGTERM);
                let grace = meta
                    .spec
                    .as_ref()
                    .and_then(|c| c.spec.stop_grace_period)
                    .unwrap_or(crate::manifest::DEFAULT_STOP_GRACE);
                let why = super::records::StopReason { run: r.run, reason };
                if let Err(e) = state::write_json(&paths.stop_reason(), &why) {
                    tracing::warn!(container = %owned, error = %e, "record why it is stopped");
                }
                me.stop_blocking(&owned, signal, grace)
            },
            name,
        )
        .await
    }

    fn remove_blocking(&self, name: &str, keep_log: bool) -> Result<(), RuntimeError> {
        self.stop_blocking(name, Signal::SIGKILL, Duration::ZERO)?;
        let paths = self.paths(name);
        // First: a removal cut short must not leave a folder that claims to serve.
        match fs::remove_file(paths.dir.join(super::instance::PROMOTED)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RuntimeError::Remove {
                    name: name.to_owned(),
                    message: format!("remove its promotion mark: {e}"),
                })
            }
        }
        self.records.forget(&paths.dir);
        self.exits.forget(&paths.dir);
        self.states.forget(&paths.run_dir);
        if keep_log {
            keep_last_run_log(&paths);
        } else {
            let (log, range) = paths.kept_log();
            for p in [log, range] {
                let _ = fs::remove_file(p);
            }
        }
        self.usage_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let mut errors = Vec::new();
        if let Err(e) = cgroups::remove(&cgroups::container_path(&self.instance, name)) {
            errors.push(e.to_string());
        }
        cgroups::remove_parents_if_empty(&self.instance);
        for dir in [&paths.run_dir, &paths.dir] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("remove {}: {e}", dir.display())),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Remove {
                name: name.to_owned(),
                message: errors.join("; "),
            })
        }
    }

    fn list_blocking(&self) -> Result<Vec<Observed>, RuntimeError> {
        let dir = self.state_root.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RuntimeError::List { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let check = {
            let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= CHECK_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let out: Vec<Observed> = names.iter().map(|name| self.observe(name, check)).collect();
        self.shims.update(out.iter().filter_map(|o| match &o.state {
            ObservedState::Running(r) => Some((o.name.as_str(), r)),
            _ => None,
        }));
        Ok(out)
    }

    /// Kills and removes cgroups under this instance that belong to no known container
    /// (left by a crash between creating a cgroup and writing its record).
    pub fn remove_orphan_cgroups(&self, known: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        for name in cgroups::list_containers(&self.instance) {
            if known.contains(&name) {
                continue;
            }
            let path = cgroups::container_path(&self.instance, &name);
            for pid in cgroups::procs(&path) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            if cgroups::remove(&path).is_ok() {
                removed.push(name);
            }
        }
        cgroups::remove_parents_if_empty(&self.instance);
        removed
    }
}

/// Before a restart: the run that ended counts as a restart only if its process had
/// started (a start that failed is not a run), and becomes the `lastState`.
fn note_previous_run(record: &mut Record, paths: &Paths) {
    // Its start was noted, or (an agent killed before noting it) the shim recorded it.
    let shim_ran: Option<Running> = state::read_json(&paths.state()).ok().flatten();
    let shim_ran = shim_ran.filter(|r| r.run == record.run);
    if record.started_at.is_none() {
        record.started_at = shim_ran.map(|r| r.started_at);
    }
    if record.started_at.is_none() {
        return;
    }
    record.restart_count += 1;
    // Its output stays in the log, and is the previous run's from now on.
    let len = fs::metadata(paths.log()).map_or(0, |m| m.len());
    record.previous_log = Some(LogRange {
        file: "container.log".into(),
        start: record.log_start.min(len),
        end: len,
    });
    record.log_start = len;
    let exit: Option<ExitRecord> = state::read_json(&paths.exit()).ok().flatten();
    let Some(exit) = exit.filter(|e| e.run == record.run) else {
        // Lost (a reboot): it ran, but how it ended is unknown.
        record.last_state = None;
        return;
    };
    // The agent's own reason for stopping it (unhealthy), for this run only.
    let stopped_because: Option<super::records::StopReason> =
        state::read_json(&paths.stop_reason()).ok().flatten();
    let _ = fs::remove_file(paths.stop_reason());
    record.last_state = Some(LastState {
        exit_code: exit.exit_code,
        signal: exit.signal,
        oom_killed: exit.oom_killed,
        started_at: record.started_at,
        finished_at: exit.finished_at,
        message: exit.message.or_else(|| {
            stopped_because
                .filter(|s| s.run == exit.run)
                .map(|s| s.reason)
        }),
    });
    if let Some(h) = record.history.iter_mut().find(|h| h.run == exit.run) {
        h.finished_at_ms = Some(exit.finished_at_ms);
        h.exit_code = Some(exit.exit_code);
    }
}

/// Before a removal for a replace: the last run's output is kept aside (its range of
/// the log with it) for the next container of the name. Best effort: a log that
/// cannot be kept is only lost, as before.
fn keep_last_run_log(paths: &Paths) {
    let Ok(len) = fs::metadata(paths.log()).map(|m| m.len()) else {
        return;
    };
    let start = Record::load(&paths.record())
        .ok()
        .flatten()
        .map_or(0, |r| r.log_start.min(len));
    let (log, range) = paths.kept_log();
    let kept = LogRange {
        file: "previous.log".into(),
        start,
        end: len,
    };
    let result = state::write_json(&range, &kept).and_then(|()| fs::rename(paths.log(), &log));
    if let Err(e) = result {
        tracing::warn!(log = %paths.log().display(), error = %e, "keep the log of a replaced container");
        let _ = fs::remove_file(range);
    }
}

/// For a new container: the log its predecessor left (see [`keep_last_run_log`]) becomes
/// its `previous.log`.
fn adopt_kept_log(paths: &Paths) -> Option<LogRange> {
    let (log, range) = paths.kept_log();
    let kept: Option<LogRange> = state::read_json(&range).ok().flatten();
    let _ = fs::remove_file(&range);
    let kept = kept?;
    match fs::rename(&log, paths.previous_log()) {
        Ok(()) => Some(kept),
        Err(_) => {
            let _ = fs::remove_file(&log);
            None
        }
    }
}

/// Records a start that failed before the shim could (a mount source missing, the
/// shim not spawned): the container is then observed as failed to start, not lost,
/// which would restart it even under `Never`. Only for a run whose record was written
/// and that never started; a failure before that (an unknown user) leaves nothing.
fn record_start_failure(paths: &Paths, cgroup: &str, error: &RuntimeError) {
    let Ok(Some(record)) = Record::load(&paths.record()) else {
        return;
    };
    let run = record.run;
    let exit: Option<ExitRecord> = state::read_json(&paths.exit()).ok().flatten();
    let running: Option<Running> = state::read_json(&paths.state()).ok().flatten();
    if record.started_at.is_some()
        || exit.is_some_and(|e| e.run == run)
        || running.is_some_and(|r| r.run == run)
    {
        return; // it ran (or runs: its report was lost), or the shim recorded the failure
    }
    if !cgroups::procs(cgroup).is_empty() {
        // Something of it runs (a shim that died after the exec, before its state):
        // not a failed start. Observed as lost; the restart ends it first (`prepare`).
        tracing::warn!(%cgroup, "a failed start left processes in its cgroup");
        return;
    }
    let record = ExitRecord {
        run,
        exit_code: 127,
        signal: None,
        finished_at: now(),
        finished_at_ms: super::records::now_ms(),
        error: Some(error.to_string()),
        oom_killed: false,
        message: None,
    };
    if let Err(e) = state::write_json(&paths.exit(), &record) {
        tracing::warn!(path = %paths.exit().display(), error = %e, "record a failed start");
    }
}

/// The annotations of a container's OCI config: where a wharf from before record
/// versions kept what the reconciler made the container from. Only those are parsed
/// (`Spec::load` reads byte by byte). `None` when the file is missing or not JSON.
fn config_annotations(config: &Path) -> Option<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Annotations {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    let a: Annotations = state::read_json(config).ok()??;
    Some(a.annotations.unwrap_or_default())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
    name: &str,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RuntimeError::Prepare {
            name: name.to_owned(),
            message: format!("runtime task failed: {e}"),
        })
    })
}

impl Runtime for LinuxRuntime {
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let me = self.clone();
        blocking(move || me.list_blocking(), "*").await
    }

    async fn start(&self, req: StartRequest) -> Result<Running, RuntimeError> {
        let me = self.clone();
        let name = req.name.clone();
        blocking(
            move || {
                let started = me
                    .prepare(&req)
                    .and_then(|(paths, _)| me.spawn_shim(&req.name, &paths));
                if let Err(e) = &started {
                    let cgroup = cgroups::container_path(&me.instance, &req.name);
                    record_start_failure(&me.paths(&req.name), &cgroup, e);
                }
                started
            },
            &name,
        )
        .await
    }

    async fn stop(&self, name: &str, signal: Signal, grace: Duration) -> Result<(), RuntimeError> {
        let me = self.clone();
        let n = name.to_owned();
        blocking(move || me.stop_blocking(&n, signal, grace), name).await
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let me = self.clone();
        let n = name.to_owned();
        blocking(move || me.remove_blocking(&n, false), name).await
    }

    async fn remove_for_replace(&self, name: &str) -> Result<(), RuntimeError> {
        let me = self.clone();
        let n = name.to_owned();
        blocking(move || me.remove_blocking(&n, true), name).await
    }

    async fn promote(&self, name: &str) -> Result<(), RuntimeError> {
        let dir = self.paths(name).dir;
        let n = name.to_owned();
        blocking(
            move || {
                state::write_json(&dir.join(super::instance::PROMOTED), &true).map_err(|e| {
                    RuntimeError::Promote {
                        name: n,
                        message: e.to_string(),
                    }
                })
            },
            name,
        )
        .await
    }
}

/// Which containers (by name) under `state_root` were created from which image digest,
/// read from their records: what an offline `wharf image rm` or `prune` must not delete.
/// An error for a container whose record is of a newer wharf: it could use any image.
pub fn image_users(
    state_root: &Path,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, RecordError> {
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let Ok(entries) = fs::read_dir(state_root.join("containers")) else {
        return Ok(users);
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let meta = match Record::load(&dir.join("record.json")) {
            Ok(Some(r)) if r.meta.is_some() => r.meta,
            Err(e @ RecordError::UnknownVersion { .. }) => return Err(e),
            _ => config_annotations(&dir.join("config.json"))
                .and_then(|a| ContainerMeta::from_annotations(&a)),
        };
        if let Some(digest) = meta.map(|m| m.image_digest).filter(|d| !d.is_empty()) {
            users.entry(digest).or_default().push(name);
        }
    }
    for names in users.values_mut() {
        names.sort();
    }
    Ok(users)
}
