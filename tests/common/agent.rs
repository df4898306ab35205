//! Runs the real `wharf agent` binary on temp roots and talks to its endpoint.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The fixture registry (`scripts/test-registry.sh`).
pub fn registry() -> String {
    std::env::var("WHARF_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5099".into())
}

/// The busybox test image in the fixture registry.
pub fn busybox() -> String {
    format!("{}/test/busybox:latest", registry())
}

/// Whether the registry answers; under WHARF_REQUIRE_PRIVILEGED=1 its absence fails.
pub fn registry_up(test: &str) -> bool {
    let up = http_get(&registry(), "/v2/").is_some();
    if !up {
        if super::required() {
            panic!(
                "{test}: registry {} is not reachable; run scripts/test-registry.sh start",
                registry()
            );
        }
        eprintln!(
            "SKIP {test}: registry {} is not reachable (scripts/test-registry.sh start)",
            registry()
        );
    }
    up
}

/// A plain HTTP/1.0 GET to `HOST:PORT` or `unix:/path`; returns (status, body) or None
/// when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut raw = String::new();
    if let Some(socket) = addr.strip_prefix("unix:") {
        let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: wharf\r\n\r\n").ok()?;
        s.read_to_string(&mut raw).ok()?;
    } else {
        let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        s.read_to_string(&mut raw).ok()?;
    }
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// One agent with its own manifests folder, state root, run dir, endpoint socket and
/// network namespace: every bridge, veth and nftables table it makes lives in that
/// namespace, so nothing touches the host's network, and it all goes with it.
pub struct Agent {
    pub tmp: tempfile::TempDir,
    pub manifests: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    /// `unix:/path` of the endpoint (a socket reaches across network namespaces).
    pub addr: String,
    /// The agent's network namespace (pinned by a bind mount; kept across restarts).
    pub netns: PathBuf,
    /// Extra agent flags.
    pub extra: Vec<String>,
    /// `--resync` (2s unless a test needs the periodic resync out of the way).
    pub resync: &'static str,
    /// Extra environment variables (e.g. `WHARF_FAULT`).
    pub env: Vec<(String, String)>,
    /// Start the agent with this soft open-files limit (through `prlimit`).
    pub nofile_soft: Option<u64>,
    child: Option<Child>,
}

impl Agent {
    pub fn new() -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let manifests = tmp.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let netns = tmp.path().join("agent.netns");
        wharf::net::netns::create(&netns).expect("create the agent's network namespace");
        Agent {
            manifests,
            state: tmp.path().join("state"),
            run: tmp.path().join("run"),
            addr: format!("unix:{}", tmp.path().join("agent.sock").display()),
            netns,
            extra: Vec::new(),
            resync: "2s",
            env: Vec::new(),
            nofile_soft: None,
            tmp,
            child: None,
        }
    }

    /// Pulls `image` into the agent's store from the host side (the agent's namespace
    /// cannot reach the registry on the host's loopback).
    pub fn pre_pull(&self, image: &str) {
        let state = self.state.display().to_string();
        let (code, out) = wharf(&[
            "pull",
            "--state",
            &state,
            "--insecure-registry",
            &registry(),
            image,
        ]);
        assert_eq!(code, 0, "pre-pull {image}: {out}");
    }

    pub fn start(&mut self) {
        self.spawn();
        super::wait_for(30, "agent endpoint", || {
            self.get("/healthz").filter(|(s, _)| *s == 200)
        });
    }

    /// Waits until the agent process ends (a fault point killed it), and says how.
    pub fn wait_killed(&mut self, secs: u64) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the agent was started");
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent is still alive after {secs}s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the agent without waiting for its endpoint.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("agent.log"))
            .unwrap();
        // The registry is on the host's loopback, out of the agent's namespace: pull the
        // test image beforehand (IfNotPresent then finds it in the store).
        if !self.state.join("images/refs").exists() {
            self.pre_pull(&busybox());
        }
        let mut command = match self.nofile_soft {
            Some(soft) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:")).arg("--").arg("nsenter");
                c
            }
            None => Command::new("nsenter"),
        };
        let child = command
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_wharf"))
            .args(["agent", "--manifests"])
            .arg(&self.manifests)
            .arg("--state")
            .arg(&self.state)
            .arg("--run-dir")
            .arg(&self.run)
            .args([
                "--listen",
                &self.addr,
                "--insecure-registry",
                &registry(),
                "--resync",
                self.resync,
            ])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the agent (containers must survive).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent and wait for it to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().ok()
    }

    /// Runs `f` on a thread inside the agent's network namespace.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        wharf::net::netns::run_in(&self.netns, f).expect("enter the agent's network namespace")
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.addr, path)
    }

    pub fn write(&self, file: &str, text: &str) {
        let p = self.manifests.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as editors and git do, so the watcher never sees half a file.
        let tmp = self.manifests.join(format!(".{file}.partial"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    pub fn container(&self, name: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(&format!("/v1/containers/{name}"))?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Waits until the container object satisfies `pred`; panics with the last object
    /// and the agent's log otherwise.
    pub fn wait_container(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            last = self.container(name);
            if let Some(c) = &last {
                if pred(c) {
                    return c.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {name}: {what}; last: {last:?}\nagent log:\n{}",
            self.log()
        );
    }

    /// `wharf exec [extra...] name -- sh -c cmd` against this agent's roots: exit code,
    /// stdout, stderr.
    pub fn exec(&self, extra: &[&str], name: &str, cmd: &str) -> (i32, String, String) {
        let (state, run) = (
            self.state.display().to_string(),
            self.run.display().to_string(),
        );
        let mut args = vec!["exec", "--state", &state, "--run-dir", &run];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[name, "--", "sh", "-c", cmd]);
        wharf_full(&args)
    }

    /// Runs `wharf logs NAME -f` against this agent; what it printed comes back from
    /// [`LogFollower::finish`]. Reading stops once the output contains `until`.
    pub fn follow_logs(&self, name: &str, until: &str) -> LogFollower {
        use std::io::Read;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["logs", name, "-f", "--host", &self.addr])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let until = until.to_string();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&got).contains(&until) {
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        LogFollower { child, reader }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("agent.log")).unwrap_or_default()
    }

    pub fn instance(&self) -> String {
        wharf::agent::instance_id(&self.state)
    }

    /// Removes every container of the agent's records (processes by their PID, cgroups,
    /// state) through the runtime.
    fn remove_containers(&self) {
        let rt = wharf::runtime::LinuxRuntime::new(
            &self.state,
            &self.run,
            &self.instance(),
            PathBuf::from(env!("CARGO_BIN_EXE_wharf")),
        );
        let _ = std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio.block_on(async {
                use wharf::runtime::Runtime;
                for o in rt.list().await.unwrap_or_default() {
                    let _ = rt.remove(&o.name).await;
                }
            });
            rt.remove_orphan_cgroups(&[]);
        })
        .join();
    }
}

impl Drop for Agent {
    /// Stops the agent, then removes every container it made (processes by their PID,
    /// cgroups, state) through the runtime, so a failed test leaves nothing behind.
    fn drop(&mut self) {
        self.kill();
        // (A test may have deleted the state root, e.g. `wharf system reset --purge`:
        // the namespaces below still need removing.)
        if self.state.exists() {
            self.remove_containers();
        }
        // Container namespaces, then the agent's: with their last process gone, the
        // bridges, veths and the nftables table inside go with them.
        for ns in wharf::net::netns::list(&self.run.join("netns")).unwrap_or_default() {
            let _ = wharf::net::netns::remove(&ns);
        }
        let _ = wharf::net::netns::remove(&self.netns);
    }
}

/// A Container manifest running `script` with busybox sh.
pub fn container_yaml(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {}\n  command: [\"sh\", \"-c\", {script:?}]\n  stopGracePeriod: 1s\n{extra}",
        busybox()
    )
}

pub fn pid_of(c: &serde_json::Value) -> i32 {
    c["pid"].as_i64().expect("pid") as i32
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Runs the wharf binary; returns its exit code and stdout.
pub fn wharf(args: &[&str]) -> (i32, String) {
    let (code, out, _) = wharf_full(args);
    (code, out)
}

/// Runs the wharf binary; returns its exit code, stdout and stderr.
pub fn wharf_full(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `wharf logs -f`.
pub struct LogFollower {
    child: std::process::Child,
    reader: std::thread::JoinHandle<String>,
}

impl LogFollower {
    /// Waits up to `secs` for the expected text, then stops the command and returns
    /// everything it printed.
    pub fn finish(mut self, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !self.reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().unwrap()
    }
}
