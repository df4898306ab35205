//! The lifecycle of a container as Docker and kubelet users expect it, with the real
//! agent: restart policies against exits 0, 1 and a signal; the restart backoff read
//! from the recorded restart times; `Never` after a failed start; the stop grace
//! period; logs across restarts and replaces (`--previous`, `-f`).

mod common;

use std::time::Duration;

use common::agent::{alive, container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

fn record(agent: &Agent, name: &str) -> serde_json::Value {
    let path = agent
        .state
        .join("containers")
        .join(name)
        .join("record.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn kill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn restart_policies_follow_exits_0_1_and_a_signal() {
    if !ready("restart_policies") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let policy = |p: &str| format!("  restartPolicy: {p}\n");
    let cases = [
        ("always-ok", "echo run; exit 0", "Always"),
        ("onfail-ok", "echo run; exit 0", "OnFailure"),
        ("onfail-bad", "echo run; exit 1", "OnFailure"),
        ("never-bad", "echo run; exit 1", "Never"),
        ("onfail-sig", "exec sleep 1000", "OnFailure"),
        ("never-sig", "exec sleep 1000", "Never"),
    ];
    for (name, script, p) in cases {
        agent.write(
            &format!("{name}.yaml"),
            &container_yaml(name, script, &policy(p)),
        );
    }
    // Restarted: Always after exit 0, OnFailure after exit 1, with how the last run
    // ended.
    for name in ["always-ok", "onfail-bad"] {
        let c = agent.wait_container(name, 60, "restarted twice", |c| {
            c["restartCount"].as_u64().unwrap_or(0) >= 2 && !c["lastState"].is_null()
        });
        let code = if name == "always-ok" { 0 } else { 1 };
        assert_eq!(c["lastState"]["exitCode"], code, "{c}");
        assert!(c["lastState"]["finishedAt"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
    }
    // Not restarted: OnFailure after exit 0, Never after exit 1.
    for (name, code) in [("onfail-ok", 0), ("never-bad", 1)] {
        let c = agent.wait_container(name, 60, "exited", |c| c["state"] == "exited");
        assert_eq!(
            (&c["exitCode"], &c["restartCount"]),
            (&code.into(), &0.into()),
            "{c}"
        );
    }
    // A signal: 128 + 9, restarted by OnFailure (once, at once), not by Never.
    for name in ["onfail-sig", "never-sig"] {
        let c = agent.wait_container(name, 60, "running", |c| c["state"] == "running");
        kill(pid_of(&c));
    }
    let c = agent.wait_container("onfail-sig", 30, "restarted", |c| {
        c["state"] == "running" && c["restartCount"] == 1
    });
    assert_eq!(
        (&c["lastState"]["exitCode"], &c["lastState"]["signal"]),
        (&137.into(), &9.into()),
        "{c}"
    );
    let c = agent.wait_container("never-sig", 30, "exited", |c| c["state"] == "exited");
    assert_eq!(
        (&c["exitCode"], &c["restartCount"]),
        (&137.into(), &0.into()),
        "{c}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agent.container("onfail-ok").unwrap()["restartCount"], 0);
}

/// The backoff read from the recorded runs: the first restart follows the exit at once,
/// the next ones wait at least 100 ms, 200 ms, 400 ms (lower bounds only: a loaded
/// machine may be slower, never faster).
#[test]
fn the_restart_backoff_starts_at_once_and_doubles_from_100ms() {
    if !ready("restart_backoff") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write("loop.yaml", &container_yaml("loop", "exit 1", ""));
    agent.wait_container("loop", 60, "five restarts", |c| {
        c["restartCount"].as_u64().unwrap_or(0) >= 5
    });
    let history = record(&agent, "loop")["history"]
        .as_array()
        .unwrap()
        .clone();
    let runs: Vec<(i64, Option<i64>)> = history
        .iter()
        .map(|r| {
            (
                r["startedAtMs"].as_i64().unwrap(),
                r["finishedAtMs"].as_i64(),
            )
        })
        .collect();
    assert!(runs.len() >= 5, "{history:?}");
    let gaps: Vec<i64> = runs
        .windows(2)
        .map(|w| w[1].0 - w[0].1.expect("a finished run has its end"))
        .collect();
    // Gap k is the wait before restart k+1: 0, then 100, 200, 400 ms.
    for (k, floor) in [(1, 100), (2, 200), (3, 400)] {
        assert!(gaps[k] >= floor, "restart {} after {gaps:?}", k + 1);
    }
    assert!(
        gaps[0] < gaps[3],
        "the first restart does not wait like the fourth: {gaps:?}"
    );
    let c = agent.container("loop").unwrap();
    assert_eq!(c["lastState"]["exitCode"], 1, "{c}");
}

/// A start that fails is not a run: under `Never` it is the one try (a command the
/// image lacks, a bind source that does not exist); nothing counts as a restart.
#[test]
fn never_after_a_failed_start_means_never() {
    if !ready("never_after_start_failure") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let never = "  restartPolicy: Never\n";
    agent.write(
        "nocmd.yaml",
        &format!(
            "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: nocmd\nspec:\n  image: {}\n  command: [no-such-command]\n{never}",
            common::agent::busybox()
        ),
    );
    agent.write(
        "nobind.yaml",
        &container_yaml(
            "nobind",
            "exec sleep 1000",
            &format!("{never}  mounts: [\"/nonexistent/wharf-never:/data\"]\n"),
        ),
    );
    for name in ["nocmd", "nobind"] {
        let c = agent.wait_container(name, 60, "failed", |c| c["state"] == "failed");
        assert_eq!(c["restartCount"], 0, "{c}");
    }
    std::thread::sleep(Duration::from_secs(2));
    for name in ["nocmd", "nobind"] {
        let c = agent.container(name).unwrap();
        assert_eq!(
            (&c["state"], &c["restartCount"]),
            (&"failed".into(), &0.into()),
            "{c}"
        );
        assert_eq!(record(&agent, name)["run"], 1, "{name} was started again");
    }
}

/// A stop sends the stop signal, waits `stopGracePeriod` (1 s here), then SIGKILL: a
/// container that ignores SIGTERM ends 1 s ± 100 ms after it got it (1001–1008 ms
/// measured here).
#[test]
fn the_stop_grace_period_is_honoured_then_sigkill() {
    if !ready("stop_grace") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let script = "trap 'echo term' TERM; while true; do sleep 0.01; done";
    agent.write("stubborn.yaml", &container_yaml("stubborn", script, ""));
    let pid = pid_of(&agent.wait_container("stubborn", 60, "running", |c| c["state"] == "running"));
    // Busybox's `date` has no %N: both ends are seen from here, polled every 2 ms.
    std::fs::remove_file(agent.manifests.join("stubborn.yaml")).unwrap();
    let log = agent.state.join("containers/stubborn/container.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("term")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no SIGTERM within 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let termed = std::time::Instant::now();
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let waited_ms = termed.elapsed().as_millis();
    println!("killed {waited_ms} ms after SIGTERM");
    assert!(
        (900..=1100).contains(&waited_ms),
        "killed {waited_ms} ms after SIGTERM, with a 1 s grace period"
    );
}

/// `wharf logs -f` across a replace gets every line of the old container, then the new
/// one's; `--previous` shows the old container's output after the replace, and the
/// crashed run's after a restart.
#[test]
fn logs_follow_across_a_replace_and_previous_shows_the_run_before() {
    if !ready("logs_across_replace") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let old = "trap 'echo old-last; exit 0' TERM; i=0; while true; do echo old $i; i=$((i+1)); sleep 0.02; done";
    agent.write("talk.yaml", &container_yaml("talk", old, ""));
    agent.wait_container("talk", 60, "running", |c| c["state"] == "running");
    let follower = agent.follow_logs("talk", "new 3\n");
    std::thread::sleep(Duration::from_millis(500));
    let new = "i=0; while true; do echo new $i; i=$((i+1)); sleep 0.02; done";
    agent.write("talk.yaml", &container_yaml("talk", new, ""));
    let got = follower.finish(60);
    let lines: Vec<&str> = got.lines().collect();
    let last_old = lines.iter().position(|l| *l == "old-last").expect(&got);
    let first_new = lines.iter().position(|l| *l == "new 0").expect(&got);
    assert!(last_old < first_new, "{got}");
    // Every old line, in order, none missing.
    let olds: Vec<&str> = lines[..last_old].to_vec();
    for (i, l) in olds.iter().enumerate() {
        assert_eq!(*l, format!("old {i}"), "{got}");
    }

    // --previous: the replaced container's output, ending with its last line.
    let (code, previous) =
        common::agent::wharf(&["logs", "talk", "--previous", "--host", &agent.addr]);
    assert_eq!(code, 0, "{previous}");
    assert!(
        previous.starts_with("old 0\n") && previous.ends_with("old-last\n"),
        "{previous}"
    );
    assert!(!previous.contains("new 0"), "{previous}");

    // A crash and restart: --previous is now the crashed run (the new container's
    // first), and the plain log still holds every run of the container, as Docker's.
    let c = agent.wait_container("talk", 30, "running", |c| c["state"] == "running");
    std::thread::sleep(Duration::from_millis(200));
    kill(pid_of(&c));
    agent.wait_container("talk", 30, "restarted", |c| {
        c["state"] == "running" && c["restartCount"] == 1
    });
    let (code, previous) =
        common::agent::wharf(&["logs", "talk", "--previous", "--host", &agent.addr]);
    assert_eq!(code, 0, "{previous}");
    assert!(
        previous.starts_with("new 0\n") && !previous.contains("old"),
        "{previous}"
    );
    let (code, tail) = common::agent::wharf(&[
        "logs",
        "talk",
        "--previous",
        "--tail",
        "1",
        "--host",
        &agent.addr,
    ]);
    assert_eq!(code, 0);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(previous.ends_with(&tail), "{previous:?} / {tail:?}");
}
