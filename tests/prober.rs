//! `wharf prober`, the agent's runner of `exec` health probes: each probe confined as
//! `wharf exec` confines it, answered by id, bounded in time and output, with nothing
//! of the prober reachable from inside the container.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{container_yaml, pid_of, Agent};
use common::status_field;
use wharf::health::prober_process::{Request, Response};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

fn request(id: u64, cmd: &str, timeout_ms: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Request {
        id,
        name: "web".into(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        timeout_ms,
    })
    .unwrap();
    line.push(b'\n');
    line
}

#[test]
fn probes_run_confined_answered_by_id_bounded_and_end_with_the_prober() {
    if !ready("prober") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "web.yaml",
        &container_yaml("web", "exec sleep 1000", "  user: \"1000:1000\"\n"),
    );
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let init = std::fs::read_to_string(format!("/proc/{}/status", pid_of(&c))).unwrap();

    let mut prober = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["prober", "--state"])
        .arg(&agent.state)
        .arg("--run-dir")
        .arg(&agent.run)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = prober.stdin.take().unwrap();
    let mut answers = BufReader::new(prober.stdout.take().unwrap());
    let mut read = || {
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        serde_json::from_str::<Response>(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };

    // Sent together, answered by id as each ends: the slow one last.
    let t0 = Instant::now();
    input.write_all(&request(1, "sleep 10", 400)).unwrap();
    input
        .write_all(&request(2, "echo out; echo err >&2; exit 3", 5000))
        .unwrap();
    input
        .write_all(&request(
            3,
            "ls /proc/self/fd; grep -E '^(Uid|CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status",
            5000,
        ))
        .unwrap();
    input
        .write_all(&request(4, "yes | head -c 100000", 5000))
        .unwrap();
    let mut got: Vec<Response> = (0..4).map(|_| read()).collect();
    got.sort_by_key(|r| r.id);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{:?} {got:?}",
        t0.elapsed()
    );

    let timed_out = &got[0];
    assert!(
        timed_out.timed_out && timed_out.code.is_none(),
        "{timed_out:?}"
    );
    let code = &got[1];
    assert_eq!(code.code, Some(3), "{code:?}");
    assert!(
        code.output.contains("out") && code.output.contains("err"),
        "{code:?}"
    );

    // Confined as the container's init; only its stdio (and ls's own listing) open.
    let confined = &got[2];
    assert_eq!(confined.code, Some(0), "{confined:?}");
    let fds: Vec<&str> = confined
        .output
        .lines()
        .take_while(|l| l.parse::<u32>().is_ok())
        .collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{}", confined.output);
    for key in ["Uid", "CapEff", "CapBnd", "Seccomp", "NoNewPrivs"] {
        assert_eq!(
            status_field(&confined.output, key),
            status_field(&init, key),
            "{key}\n{}",
            confined.output
        );
    }
    assert_eq!(got[3].output.len(), wharf::health::probe::MAX_OUTPUT);
    assert_eq!(got[3].code, Some(0));

    // The timed out command is gone from the container (a zombie at most, `[sleep]`,
    // until its init reaps it, as after a `docker exec` that was killed).
    let (_, ps, _) = agent.exec(&[], "web", "ps -o args");
    assert!(!ps.lines().any(|l| l.trim() == "sleep 10"), "{ps}");

    // Its stdin closed (the agent gone), the prober ends and takes its probes along.
    input.write_all(&request(5, "sleep 30", 60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(input);
    let deadline = Instant::now() + Duration::from_secs(10);
    while prober.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the prober outlived its stdin");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, ps, _) = agent.exec(&[], "web", "ps -o args");
    assert!(!ps.lines().any(|l| l.trim() == "sleep 30"), "{ps}");
}
