//! Updates with the real agent: the new image is pulled before anything is stopped, so
//! a registry that is down never takes the running version away; StartFirst updates
//! lose no request and roll back a version that never becomes healthy.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::{container_yaml, pid_of, Agent};

#[test]
fn a_recreate_update_while_the_registry_is_down_keeps_the_old_version_running() {
    if !(common::privileged("update_registry_down") && common::agent::registry_up("update")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write("web.yaml", &container_yaml("web", "exec sleep 1000", ""));
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);
    // The new version's registry does not answer (nothing listens on port 1).
    let v2 = container_yaml("web", "exec sleep 1000", "")
        .replace(&common::agent::busybox(), "127.0.0.1:1/test/busybox:v2");
    agent.write("web.yaml", &v2);
    let c = agent.wait_container("web", 30, "says why", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the update is not applied"))
    });
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(pid_of(&c), pid, "the old version was stopped: {c}");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("next try at"), "{message}");
    assert!(common::agent::alive(pid));
    // Its registry back (here: the image moved to one that answers), it is replaced.
    agent.write("web.yaml", &container_yaml("web", "exec sleep 1001", ""));
    let c = agent.wait_container("web", 30, "replaced", |c| {
        c["state"] == "running" && c["generation"] == 2
    });
    assert_ne!(pid_of(&c), pid);
}

/// A client that GETs `/v` from a published port in a loop (a new connection each
/// time), from inside the agent's network namespace, counting what failed.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    /// When and how each failed request failed.
    failed: Vec<String>,
    /// The body of the latest answer.
    last: String,
}

impl ClientLoop {
    fn start(agent: &Agent, addr: &'static str) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let netns = agent.netns.clone();
        let (s, out) = (stop.clone(), Arc::clone(&seen));
        let thread = std::thread::spawn(move || {
            wharf::net::netns::run_in(&netns, || {
                let t0 = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    let answer = common::agent::http_get(addr, "/v");
                    let mut seen = out.lock().unwrap();
                    match answer {
                        Some((200, body)) => {
                            seen.ok += 1;
                            seen.last = body.trim().to_owned();
                        }
                        other => seen.failed.push(format!("{:?}: {other:?}", t0.elapsed())),
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        });
        ClientLoop {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn last(&self) -> String {
        self.seen.lock().unwrap().last.clone()
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A web server answering `/v` with `version`, with an http healthcheck, updated with
/// StartFirst; `serve: false` makes a version that never listens.
fn web_yaml(version: u32, serve: bool, timeout: &str) -> String {
    let server = if serve {
        "exec httpd -f -p 8080 -h /www"
    } else {
        "exec sleep 1000"
    };
    container_yaml(
        "web",
        &format!("mkdir -p /www && echo $VERSION > /www/v && {server}"),
        &format!(
            "  env: {{VERSION: \"{version}\"}}\n  ports: [\"18085:8080\"]\n  healthcheck: {{http: {{port: 8080, path: /v}}, interval: 200ms, timeout: 1s, retries: 2}}\n  update: {{strategy: StartFirst, timeout: {timeout}}}\n"
        ),
    )
}

#[test]
fn start_first_updates_under_a_client_loop_lose_no_request_and_move_the_name_too() {
    if !(common::privileged("update_start_first") && common::agent::registry_up("update")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write("web.yaml", &web_yaml(1, true, "30s"));
    agent.write("peer.yaml", &container_yaml("peer", "exec sleep 1000", ""));
    agent.wait_container("web", 60, "healthy", |c| c["health"] == "healthy");
    agent.wait_container("peer", 60, "running", |c| c["state"] == "running");
    let client = ClientLoop::start(&agent, "127.0.0.1:18085");
    common::wait_for(30, "the first version answers", || {
        (client.last() == "1").then_some(())
    });

    let mut pids = vec![];
    for version in 2..=11u32 {
        agent.write("web.yaml", &web_yaml(version, true, "30s"));
        let c = agent.wait_container("web", 60, "updated", |c| {
            c["generation"] == version && c["message"].is_null() && c["health"] == "healthy"
        });
        pids.push(pid_of(&c));
        common::wait_for(30, "the new version answers", || {
            (client.last() == version.to_string()).then_some(())
        });
        // One copy left: the old one is gone, its slot free for the next update.
        let dirs: Vec<String> = std::fs::read_dir(agent.state.join("containers"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("web"))
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
    }
    let seen = client.finish();
    assert!(seen.ok > 100, "{seen:?}");
    assert!(
        seen.failed.is_empty(),
        "{} of {} requests failed during 10 updates: {:?}",
        seen.failed.len(),
        seen.ok + seen.failed.len() as u64,
        seen.failed
    );
    // Every update was a new process, and the last one serves.
    pids.dedup();
    assert_eq!(pids.len(), 10);
    let c = agent.container("web").unwrap();
    assert!(common::agent::alive(pid_of(&c)));

    // The name moved too: the peer resolves web to the new version's address, and
    // `wharf exec web` enters the new version.
    let ip = c["addresses"][0]["ip"].as_str().unwrap().to_owned();
    let (code, hosts, err) = agent.exec(&[], "peer", "grep -w web /etc/hosts");
    assert_eq!(code, 0, "{err}");
    assert_eq!(hosts.trim(), format!("{ip}\tweb"), "{hosts}");
    let (code, out, err) = agent.exec(&[], "web", "cat /www/v");
    assert_eq!((code, out.trim()), (0, "11"), "{err}");
}

#[test]
fn a_start_first_update_that_never_becomes_healthy_is_rolled_back_and_the_old_serves_on() {
    if !(common::privileged("update_rollback") && common::agent::registry_up("update")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write("web.yaml", &web_yaml(1, true, "3s"));
    let c = agent.wait_container("web", 60, "healthy", |c| c["health"] == "healthy");
    let pid = pid_of(&c);
    let client = ClientLoop::start(&agent, "127.0.0.1:18085");
    common::wait_for(30, "the first version answers", || {
        (client.last() == "1").then_some(())
    });

    agent.write("web.yaml", &web_yaml(2, false, "3s"));
    let c = agent.wait_container("web", 30, "rolled back", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("rolled back"))
    });
    let message = c["message"].as_str().unwrap();
    assert!(
        message
            .contains("generation 2 was not healthy within update.timeout 3s (it was unhealthy)")
            && message.contains("generation 1 keeps serving"),
        "{message}"
    );
    assert_eq!((c["state"].as_str(), pid_of(&c)), (Some("running"), pid));
    assert_eq!(c["generation"], 1);
    assert!(!agent.state.join("containers/web.alt").exists());

    // Not tried again in a loop; the old version served throughout.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!agent.state.join("containers/web.alt").exists());
    let seen = client.finish();
    assert!(seen.failed.is_empty(), "{seen:?}");
    assert_eq!(seen.last, "1");
    let c = agent.container("web").unwrap();
    assert_eq!(pid_of(&c), pid);
    assert!(c["message"].as_str().unwrap().starts_with("rolled back"));

    // A fixed manifest goes through.
    agent.write("web.yaml", &web_yaml(3, true, "30s"));
    agent.wait_container("web", 60, "updated", |c| {
        c["generation"] == 2 && c["message"].is_null()
    });
}

/// `wharf logs -f` across a StartFirst update: every line of the old version, through
/// its last, then the new version's from its first (it moved to another folder).
#[test]
fn logs_follow_across_a_start_first_update() {
    if !(common::privileged("update_logs_follow") && common::agent::registry_up("update")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let talk = |word: &str| {
        container_yaml(
            "talk",
            &format!("trap 'echo {word}-last; exit 0' TERM; i=0; while true; do echo {word} $i; i=$((i+1)); sleep 0.02; done"),
            "  update: {strategy: StartFirst}\n",
        )
    };
    agent.write("talk.yaml", &talk("old"));
    agent.wait_container("talk", 60, "running", |c| c["state"] == "running");
    let follower = agent.follow_logs("talk", "new-last-seen\n");
    std::thread::sleep(Duration::from_millis(300));
    agent.write("talk.yaml", &talk("new"));
    // Without a healthcheck the new version serves after 5 s of running.
    agent.wait_container("talk", 60, "updated", |c| {
        c["generation"] == 2 && c["message"].is_null()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let got = follower.finish(0);
    let lines: Vec<&str> = got.lines().collect();
    let last_old = lines.iter().position(|l| *l == "old-last").expect(&got);
    let first_new = lines.iter().position(|l| *l == "new 0").expect(&got);
    assert!(last_old < first_new, "{got}");
    for (i, l) in lines[..last_old].iter().enumerate() {
        assert_eq!(*l, format!("old {i}"), "{got}");
    }
    // The new version's lines go on after the switch, in order.
    let news: Vec<&str> = lines[first_new..].to_vec();
    assert!(news.len() > 50, "{got}");
    for (i, l) in news.iter().enumerate() {
        assert_eq!(*l, format!("new {i}"), "{got}");
    }
}
