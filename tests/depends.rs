//! `dependsOn` with the real agent: starts ordered by `Healthy` and `Completed` (read
//! from the runs' recorded start and end times), a failed dependency holding only its
//! dependants, and removal in reverse order.

mod common;

use common::agent::{container_yaml, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

/// The last run's start, in ms since the epoch, from the container's record.
fn started_ms(agent: &Agent, name: &str) -> i64 {
    let path = agent.state.join(format!("containers/{name}/record.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    record["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|r| r["startedAtMs"].as_i64())
        .unwrap_or_else(|| panic!("no start recorded for {name}: {record}"))
}

#[test]
fn healthy_and_completed_dependencies_order_the_starts() {
    if !ready("depends_order") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    // Written at once: db becomes healthy 2 s after its start (its failures before
    // count for nothing: start period), the migration job ends after 1 s; app waits for
    // both.
    agent.write(
        "db.yaml",
        &container_yaml(
            "db",
            "sleep 2; touch /tmp/ready; exec sleep 1000",
            "  healthcheck: {exec: [test, -e, /tmp/ready], interval: 200ms, timeout: 2s, startPeriod: 10s}\n",
        ),
    );
    agent.write(
        "migrate.yaml",
        &container_yaml("migrate", "sleep 1; exit 0", "  restartPolicy: Never\n"),
    );
    agent.write(
        "app.yaml",
        &container_yaml(
            "app",
            "exec sleep 1000",
            "  dependsOn: [{name: db, condition: Healthy}, {name: migrate, condition: Completed}]\n",
        ),
    );
    let app = agent.wait_container("app", 30, "waiting", |c| {
        c["state"] == "pending"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("waiting for "))
    });
    let message = app["message"].as_str().unwrap();
    assert!(
        message == "waiting for db to be healthy" || message == "waiting for migrate to complete",
        "{app}"
    );
    agent.wait_container("app", 30, "running", |c| c["state"] == "running");
    let db = agent.container("db").unwrap();
    assert_eq!(db["health"], "healthy", "{db}");
    assert_eq!(db["restartCount"], 0, "{db}");
    let migrate = agent.container("migrate").unwrap();
    assert_eq!(migrate["state"], "exited", "{migrate}");
    assert_eq!(migrate["exitCode"], 0);
    // From the recorded times: app started once db had been up 2 s (its healthcheck
    // passes from then on), and after the job's exit.
    let (db_start, app_start) = (started_ms(&agent, "db"), started_ms(&agent, "app"));
    assert!(
        app_start - db_start >= 2000,
        "db {db_start}, app {app_start}"
    );
    let exit: serde_json::Value = serde_json::from_slice(
        &std::fs::read(agent.state.join("containers/migrate/exit.json")).unwrap(),
    )
    .unwrap();
    let job_end = exit["finishedAtMs"].as_i64().unwrap();
    assert!(
        app_start >= job_end,
        "job ended {job_end}, app started {app_start}"
    );

    // Removed together: the dependant goes first.
    std::fs::remove_file(agent.manifests.join("app.yaml")).unwrap();
    std::fs::remove_file(agent.manifests.join("db.yaml")).unwrap();
    common::wait_for(30, "both removed", || {
        (agent.container("app").is_none() && agent.container("db").is_none()).then_some(())
    });
    // The agent's log, without its colour codes.
    let mut log = String::new();
    let mut in_escape = false;
    for ch in agent.log().chars() {
        match ch {
            '\x1b' => in_escape = true,
            'm' if in_escape => in_escape = false,
            _ if in_escape => {}
            _ => log.push(ch),
        }
    }
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what} not in the log:\n{log}"))
    };
    assert!(
        at("object=Container/app step=Remove") < at("object=Container/db step=Remove"),
        "{log}"
    );
}

#[test]
fn a_failed_dependency_holds_only_its_dependants() {
    if !ready("depends_failed") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "broken.yaml",
        &format!(
            "{}  restartPolicy: Never\n",
            container_yaml("broken", "true", "").replace(
                "command: [\"sh\", \"-c\", \"true\"]",
                "command: [\"/no/such/binary\"]"
            )
        ),
    );
    agent.write(
        "app.yaml",
        &container_yaml("app", "exec sleep 1000", "  dependsOn: [broken]\n"),
    );
    agent.write(
        "other.yaml",
        &container_yaml("other", "exec sleep 1000", ""),
    );
    agent.wait_container("other", 30, "running", |c| c["state"] == "running");
    agent.wait_container("broken", 30, "failed", |c| c["state"] == "failed");
    let app = agent.wait_container("app", 30, "held", |c| {
        c["message"] == "waiting for broken, which failed to start"
    });
    assert_eq!(app["state"], "pending", "{app}");
    assert!(app["pid"].is_null(), "{app}");
}
