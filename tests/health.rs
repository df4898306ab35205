//! Healthchecks with the real agent: `exec`, `http` and `tcp` probes, what the container
//! object, `wharf ps` and `/metrics` say, and an unhealthy container restarted under
//! `restartPolicy: Always` (only reported under the other policies).

mod common;

use common::agent::{container_yaml, pid_of, wharf, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

/// Runs `cmd` in container `name` through `wharf exec`; it must succeed.
fn exec(agent: &Agent, name: &str, cmd: &str) {
    let (code, out, err) = agent.exec(&[], name, cmd);
    assert_eq!(code, 0, "{out}{err}");
}

fn last_probe(c: &serde_json::Value) -> serde_json::Value {
    c["probes"]
        .as_array()
        .and_then(|p| p.last().cloned())
        .unwrap_or_default()
}

#[test]
fn a_failing_exec_check_makes_it_unhealthy_and_always_restarts_it() {
    if !ready("health_exec") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "web.yaml",
        &container_yaml(
            "web",
            "touch /tmp/ok; exec sleep 1000",
            "  healthcheck: {exec: [test, -e, /tmp/ok], interval: 1s, timeout: 2s, retries: 2}\n",
        ),
    );
    let c = agent.wait_container("web", 60, "healthy", |c| c["health"] == "healthy");
    let pid = pid_of(&c);
    assert_eq!(last_probe(&c)["exitCode"], 0, "{c}");
    assert!(last_probe(&c)["time"].is_string(), "{c}");
    let (code, out) = wharf(&["ps", "--host", &agent.addr]);
    assert_eq!(code, 0);
    assert!(out.contains("running (healthy)"), "{out}");
    let (_, metrics) = agent.get("/metrics").unwrap();
    assert!(
        metrics.contains("wharf_container_health{container=\"web\",health=\"healthy\"} 1"),
        "{metrics}"
    );

    // The check now fails: two in a row make it unhealthy, and `Always` restarts it.
    exec(&agent, "web", "rm /tmp/ok");
    let c = agent.wait_container("web", 30, "restarted for being unhealthy", |c| {
        c["state"] == "running" && c["restartCount"] == 1
    });
    assert_ne!(pid_of(&c), pid);
    let message = c["lastState"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unhealthy: 2 probes in a row failed; last: exit code 1"),
        "{c}"
    );
    // A new run starts over, and its command made the file again.
    assert_ne!(c["health"], "unhealthy", "{c}");
    agent.wait_container("web", 30, "healthy again", |c| {
        c["health"] == "healthy" && c["restartCount"] == 1
    });
}

#[test]
fn an_http_check_reads_the_status_inside_the_containers_namespace() {
    if !ready("health_http") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    // No network but its own loopback: only a probe from inside its namespace reaches it.
    agent.write(
        "web.yaml",
        &container_yaml(
            "web",
            "mkdir -p /www && echo fine > /www/ok && exec httpd -f -p 127.0.0.1:8080 -h /www",
            "  networks: [none]\n  healthcheck: {http: {port: 8080, path: /ok}, interval: 1s, timeout: 2s, retries: 2}\n",
        ),
    );
    let c = agent.wait_container("web", 60, "healthy", |c| c["health"] == "healthy");
    assert_eq!(last_probe(&c)["status"], 200, "{c}");
    assert!(
        last_probe(&c)["output"]
            .as_str()
            .unwrap_or_default()
            .contains("fine"),
        "{c}"
    );
    exec(&agent, "web", "rm /www/ok");
    let c = agent.wait_container("web", 30, "restarted for being unhealthy", |c| {
        c["state"] == "running" && c["restartCount"] == 1
    });
    let message = c["lastState"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("last: HTTP 404"), "{c}");
}

#[test]
fn a_tcp_check_reaches_a_server_bound_only_inside_and_never_restarts_only_reports() {
    if !ready("health_tcp") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "db.yaml",
        &container_yaml(
            "db",
            "exec httpd -f -p 127.0.0.1:9000 -h /",
            "  healthcheck: {tcp: {port: 9000}, interval: 1s, timeout: 2s}\n",
        ),
    );
    // Nothing listens on 9001: unhealthy, and under `Never` it keeps running.
    agent.write(
        "lonely.yaml",
        &container_yaml(
            "lonely",
            "exec sleep 1000",
            "  restartPolicy: Never\n  healthcheck: {tcp: {port: 9001}, interval: 1s, timeout: 2s, retries: 2}\n",
        ),
    );
    let c = agent.wait_container("db", 60, "healthy", |c| c["health"] == "healthy");
    // Bound to the container's loopback only: its address does not answer, from the
    // agent's side of the bridge.
    let ip = c["addresses"][0]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!ip.is_empty(), "{c}");
    let reached = agent.in_netns(|| {
        std::net::TcpStream::connect_timeout(
            &format!("{ip}:9000").parse().unwrap(),
            std::time::Duration::from_secs(2),
        )
        .is_ok()
    });
    assert!(
        !reached,
        "the server answers outside the container's loopback"
    );

    let lonely = agent.wait_container("lonely", 30, "unhealthy", |c| c["health"] == "unhealthy");
    let pid = pid_of(&lonely);
    assert!(
        last_probe(&lonely)["output"]
            .as_str()
            .unwrap_or_default()
            .contains("connect to port 9001"),
        "{lonely}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let lonely = agent.container("lonely").unwrap();
    assert_eq!(lonely["state"], "running", "{lonely}");
    assert_eq!(pid_of(&lonely), pid, "restarted under Never: {lonely}");
    assert_eq!(lonely["restartCount"], 0);
}

#[test]
fn an_exec_check_that_leaves_a_process_behind_is_judged_by_its_exit() {
    if !ready("health_background") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    // The check backgrounds a process holding its output open far past the timeout.
    agent.write(
        "bg.yaml",
        &container_yaml(
            "bg",
            "exec sleep 1000",
            "  restartPolicy: Never\n  healthcheck: {exec: [sh, -c, \"sleep 30 & echo ok\"], interval: 1s, timeout: 2s}\n",
        ),
    );
    let c = agent.wait_container("bg", 30, "healthy", |c| c["health"] == "healthy");
    let probe = last_probe(&c);
    assert_eq!(probe["exitCode"], 0, "{c}");
    assert!(
        probe["output"].as_str().unwrap_or_default().contains("ok"),
        "{c}"
    );
}
