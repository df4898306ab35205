//! The agent's side of `wharf prober` ([`super::prober_process`]): started on the first
//! `exec` probe, again if it ever ends, and fed requests on its stdin; a reader task
//! hands each answer to the probe waiting for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use super::prober_process::{Request, Response};

/// The longest answer line taken: 4 KiB of output, JSON-escaped, and a margin.
const MAX_LINE: usize = 64 * 1024;

/// The probes waiting for an answer, by id, with the prober process they were sent
/// to (its number): when it ends, only its own waiters fail.
type Waiting = Arc<Mutex<HashMap<u64, (u64, oneshot::Sender<Response>)>>>;

/// Runs `exec` probes through one `wharf prober` process.
#[derive(Debug)]
pub struct Prober {
    wharf: PathBuf,
    state_root: PathBuf,
    run_root: PathBuf,
    next_id: AtomicU64,
    waiting: Waiting,
    process: tokio::sync::Mutex<Option<Process>>,
    /// How many prober processes were started.
    started: AtomicU64,
}

#[derive(Debug)]
struct Process {
    number: u64,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
}

impl Prober {
    pub fn new(wharf: PathBuf, state_root: PathBuf, run_root: PathBuf) -> Self {
        Prober {
            wharf,
            state_root,
            run_root,
            next_id: AtomicU64::new(1),
            waiting: Arc::default(),
            process: tokio::sync::Mutex::new(None),
            started: AtomicU64::new(0),
        }
    }

    /// Runs `cmd` in runtime instance `name` (exactly that one), for at most `timeout`.
    pub async fn exec(&self, name: &str, cmd: &[String], timeout: Duration) -> Response {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let failed = |output: String| Response {
            id,
            code: None,
            output,
            timed_out: false,
        };
        let (tx, rx) = oneshot::channel();
        let mut line = serde_json::to_vec(&Request {
            id,
            name: name.to_owned(),
            cmd: cmd.to_vec(),
            timeout_ms: timeout.as_millis() as u64,
        })
        .unwrap_or_default();
        line.push(b'\n');
        if let Err(e) = self.send(id, tx, &line).await {
            self.waiting.lock().expect("waiting").remove(&id);
            return failed(format!("start wharf prober: {e}"));
        }
        // The prober enforces the timeout; this one only guards against a prober that
        // hangs.
        match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => failed("wharf prober ended during the probe".into()),
            Err(_) => {
                self.waiting.lock().expect("waiting").remove(&id);
                failed("wharf prober did not answer".into())
            }
        }
    }

    /// Writes request `id`'s line, starting the prober first if it is not running, and
    /// leaves `tx` to its answer.
    async fn send(
        &self,
        id: u64,
        tx: oneshot::Sender<Response>,
        line: &[u8],
    ) -> std::io::Result<()> {
        let mut process = self.process.lock().await;
        let alive = match process.as_mut() {
            Some(p) => p.child.try_wait()?.is_none(),
            None => false,
        };
        if !alive {
            *process = Some(self.spawn()?);
        }
        let p = process.as_mut().expect("started");
        self.waiting
            .lock()
            .expect("waiting")
            .insert(id, (p.number, tx));
        p.stdin.write_all(line).await
    }

    fn spawn(&self) -> std::io::Result<Process> {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        let mut child = tokio::process::Command::new(&self.wharf)
            .arg("prober")
            .arg("--state")
            .arg(&self.state_root)
            .arg("--run-dir")
            .arg(&self.run_root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        tracing::info!(pid = child.id(), "started wharf prober");
        tokio::spawn(read_answers(stdout, self.waiting.clone(), number));
        Ok(Process {
            number,
            child,
            stdin,
        })
    }
}

/// Hands each answer of prober `number` to its waiter; at the prober's end, fails
/// those still waiting for it.
async fn read_answers(stdout: tokio::process::ChildStdout, waiting: Waiting, number: u64) {
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than MAX_LINE is cut, and fails to parse.
        let mut limited = (&mut lines).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match serde_json::from_slice::<Response>(&line) {
            Ok(r) => {
                if let Some((_, tx)) = waiting.lock().expect("waiting").remove(&r.id) {
                    let _ = tx.send(r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "an unreadable answer from wharf prober"),
        }
    }
    // Its waiters learn it ended (their senders are dropped); the next probe starts a
    // new one.
    waiting
        .lock()
        .expect("waiting")
        .retain(|_, (n, _)| *n != number);
}
