//! Crash safety by fault injection: the agent is killed (`WHARF_FAULT`, as `kill -9`)
//! at each named step of a change (see `wharf::fault`), restarted, and must converge
//! with the kernel objects counted before and after: no duplicate container, no
//! leaked mount, cgroup, veth, namespace file, lease, nftables rule or shim, and no
//! restart of a container that was running.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::agent::{container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

const NETWORK: &str =
    "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: 10.89.70.0/24\n";
const VOLUME: &str =
    "apiVersion: wharf/v1\nkind: Volume\nmetadata:\n  name: data\nspec:\n  reclaimPolicy: Delete\n";

fn write_all(agent: &Agent) {
    agent.write("backend.yaml", NETWORK);
    agent.write("data.yaml", VOLUME);
    agent.write(
        "app.yaml",
        &container_yaml(
            "app",
            "exec sleep 1000",
            "  networks: [backend]\n  ports: [\"18081:8080\"]\n  mounts: [\"data:/data\"]\n",
        ),
    );
}

fn remove_all(agent: &Agent) {
    for f in ["app.yaml", "backend.yaml", "data.yaml"] {
        std::fs::remove_file(agent.manifests.join(f)).unwrap();
    }
}

/// What one agent instance has made, counted from the kernel and the disk.
#[derive(Debug, Default, PartialEq)]
struct Census {
    /// Container folders under the state root.
    records: BTreeSet<String>,
    /// Container cgroups of the instance (any hierarchy).
    cgroups: BTreeSet<String>,
    /// Processes in those cgroups.
    processes: usize,
    /// `wharf-shim` processes serving this state root.
    shims: usize,
    bridges: usize,
    veths: usize,
    /// Network namespace files, and mounts under the run dir.
    netns: usize,
    mounts: usize,
    leases: usize,
    /// Port rules (DNAT) in the instance's nftables table.
    port_rules: usize,
    volumes: BTreeSet<String>,
}

/// The folders in `path`, hidden ones too (a volume's `.trash-…` left by a delete cut
/// short is a leak), but for the store's own `.locks`.
fn dir_names(path: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".locks")
                .collect()
        })
        .unwrap_or_default()
}

fn census(agent: &Agent) -> Census {
    let instance = agent.instance();
    let mut cgroups = BTreeSet::new();
    let mut processes = BTreeSet::new();
    for root in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ] {
        let base = std::path::Path::new(root).join("wharf").join(&instance);
        for name in dir_names(&base) {
            let procs =
                std::fs::read_to_string(base.join(&name).join("cgroup.procs")).unwrap_or_default();
            processes.extend(procs.lines().map(str::to_owned));
            cgroups.insert(name);
        }
    }
    let state = agent.state.display().to_string();
    let shims = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let p = e.path();
            std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "wharf-shim")
                && std::fs::read(p.join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&state))
        })
        .count();
    let prefix = wharf::net::link::link_prefix(&instance);
    let links: Vec<String> = agent.in_netns(|| {
        let out = Command::new("ip").args(["-j", "link"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect()
    });
    let ours = |kind: char| {
        links
            .iter()
            .filter(|l| l.strip_prefix(&prefix).is_some_and(|r| r.starts_with(kind)))
            .count()
    };
    let run = agent.run.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&run)))
        .count();
    let leases: serde_json::Value =
        std::fs::read_to_string(agent.state.join("networks/leases.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let leases = leases["networks"]
        .as_object()
        .map(|nets| {
            nets.values()
                .map(|n| n["leases"].as_object().map_or(0, |l| l.len()))
                .sum()
        })
        .unwrap_or(0);
    let table = wharf::net::firewall::table_name(&instance);
    let rules = agent.in_netns(|| {
        let out = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    Census {
        records: dir_names(&agent.state.join("containers")),
        cgroups,
        processes: processes.len(),
        shims,
        bridges: ours('b'),
        veths: ours('v'),
        netns: std::fs::read_dir(agent.run.join("netns")).map_or(0, |d| d.count()),
        mounts,
        leases,
        // `dnat to …` or `dnat ip to …`, as nft versions print them.
        port_rules: rules
            .lines()
            .filter(|l| l.contains("dnat") && l.contains(" to "))
            .count(),
        volumes: dir_names(&agent.state.join("volumes")),
    }
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `app` running on `backend` with its port and volume; `default` and `backend` made.
fn everything() -> Census {
    Census {
        records: names(&["app"]),
        cgroups: names(&["app"]),
        processes: 1,
        shims: 1,
        bridges: 2,
        veths: 1,
        netns: 1,
        mounts: 1,
        leases: 1,
        // PREROUTING and OUTPUT.
        port_rules: 2,
        volumes: names(&["data"]),
    }
}

/// Only the built-in `default` network.
fn nothing() -> Census {
    Census {
        bridges: 1,
        ..Default::default()
    }
}

/// The census once it equals `want`, or the last one after 30 s.
fn settle(agent: &Agent, want: Census) -> Census {
    settle_with(agent, |c| *c == want)
}

/// Killed while creating: the restarted agent finishes the job, and a container that
/// was already running is adopted, not started again.
fn killed_while_creating(point: &str) {
    let mut agent = Agent::new();
    agent.env = vec![(wharf::fault::ENV.into(), point.into())];
    agent.spawn();
    write_all(&agent);
    let status = agent.wait_killed(60);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{point}: {status:?}; log:\n{}",
        agent.log()
    );
    let at_death = census(&agent);
    agent.env.clear();
    agent.start();
    let c = agent.wait_container("app", 60, "running", |c| c["state"] == "running");
    if at_death.processes == 1 {
        // It was running when the agent died: the same process, adopted.
        let base = format!(
            "/sys/fs/cgroup/pids/wharf/{}/app/cgroup.procs",
            agent.instance()
        );
        let procs = std::fs::read_to_string(base).unwrap_or_default();
        assert!(
            procs.lines().any(|p| p == pid_of(&c).to_string()),
            "{point}: {c}"
        );
        assert_eq!(c["restartCount"], 0, "{point}: restarted: {c}");
        assert!(c["startedAt"].is_string(), "{point}: {c}");
    }
    let after = settle(&agent, everything());
    assert_eq!(after, everything(), "{point}: at death {at_death:?}");
}

/// Killed while removing: the restarted agent finishes the removal and leaks nothing.
fn killed_while_removing(point: &str) {
    let mut agent = Agent::new();
    agent.env = vec![(wharf::fault::ENV.into(), point.into())];
    agent.start();
    write_all(&agent);
    agent.wait_container("app", 60, "running", |c| c["state"] == "running");
    assert_eq!(
        settle(&agent, everything()),
        everything(),
        "{point}: before"
    );
    remove_all(&agent);
    let status = agent.wait_killed(60);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{point}: {status:?}"
    );
    let at_death = census(&agent);
    agent.env.clear();
    agent.start();
    let converged = settle(&agent, nothing());
    assert_eq!(converged, nothing(), "{point}: at death {at_death:?}");
    // The status follows once the removal's step has reported.
    common::wait_for(10, "app gone from the status", || {
        agent.container("app").is_none().then_some(())
    });
}

/// A web server answering `/v` with `version`, healthy once it listens, updated with
/// StartFirst.
fn web_yaml(version: u32) -> String {
    container_yaml(
        "web",
        "mkdir -p /www && echo $VERSION > /www/v && exec httpd -f -p 8080 -h /www",
        &format!(
            "  env: {{VERSION: \"{version}\"}}\n  ports: [\"18086:8080\"]\n  healthcheck: {{http: {{port: 8080, path: /v}}, interval: 200ms}}\n  update: {{strategy: StartFirst}}\n"
        ),
    )
}

/// Killed in the middle of a StartFirst update, once the traffic moved: before the new
/// version was marked promoted, the restarted agent gives the traffic back to the old
/// one (which still runs) and judges the new one again; after, it finishes the update
/// rather than rolling back a version that may already serve. Either way the update
/// completes with one version left, serving on its port.
fn killed_during_an_update(point: &str) {
    let promoted = point == "update-promote:marked";
    let mut agent = Agent::new();
    agent.env = vec![(wharf::fault::ENV.into(), point.into())];
    agent.start();
    agent.write("web.yaml", &web_yaml(1));
    agent.wait_container("web", 60, "healthy", |c| c["health"] == "healthy");
    agent.write("web.yaml", &web_yaml(2));
    let status = agent.wait_killed(60);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{point}: {status:?}; log:\n{}",
        agent.log()
    );
    let at_death = census(&agent);
    assert_eq!(
        at_death.records.len(),
        2,
        "{point}: both versions ran: {at_death:?}"
    );
    agent.env.clear();
    agent.start();
    // From the first status on, the promoted version is the one that serves: the update
    // is finished, not started over (nor rolled back) on a fresh health check. Not yet
    // promoted: the old one serves until the new one is healthy again.
    let first = common::wait_for(30, "a status", || agent.container("web"));
    assert_eq!(
        first["generation"],
        if promoted { 2 } else { 1 },
        "{point}: {first}"
    );
    let c = agent.wait_container("web", 60, "updated", |c| {
        c["generation"] == 2 && c["state"] == "running" && c["message"].is_null()
    });
    let served = common::wait_for(30, "the new version answers", || {
        agent
            .in_netns(|| common::agent::http_get("127.0.0.1:18086", "/v"))
            .filter(|(s, b)| *s == 200 && b.trim() == "2")
    });
    assert_eq!(served.1.trim(), "2");
    assert!(common::agent::alive(pid_of(&c)), "{point}: {c}");
    let after = settle_with(&agent, |c| c.records.len() == 1 && c.processes == 1);
    assert_eq!(
        (
            after.records.len(),
            after.cgroups.len(),
            after.processes,
            after.shims,
            after.veths,
            after.netns,
            after.leases,
            after.port_rules
        ),
        (1, 1, 1, 1, 1, 1, 1, 2),
        "{point}: one version left, with its port: {after:?} (at death {at_death:?})"
    );
}

/// The census once `done` says so, or the last one after 30 s.
fn settle_with(agent: &Agent, done: impl Fn(&Census) -> bool) -> Census {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = census(agent);
        if done(&c) || std::time::Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

macro_rules! crash_tests {
    ($($test:ident: $kind:ident($point:literal),)*) => {$(
        #[test]
        fn $test() {
            if !ready(stringify!($test)) {
                return;
            }
            assert!(wharf::fault::POINTS.contains(&$point));
            $kind($point);
        }
    )*};
}

crash_tests! {
    killed_after_a_start_record: killed_while_creating("container-start:record"),
    killed_after_a_shim_started: killed_while_creating("container-start:shim"),
    killed_after_a_bridge_was_made: killed_while_creating("network-ensure:bridge"),
    killed_after_a_volume_folder_was_made: killed_while_creating("volume-create:dir"),
    killed_after_a_stop_signal: killed_while_removing("container-stop:signalled"),
    killed_after_a_runtime_removal: killed_while_removing("container-remove:runtime"),
    killed_after_a_bridge_was_removed: killed_while_removing("network-remove:bridge"),
    killed_after_a_volume_went_to_trash: killed_while_removing("volume-delete:trash"),
    killed_after_an_update_was_promoted: killed_during_an_update("update-promote:marked"),
    killed_after_an_update_moved_the_traffic: killed_during_an_update("update-handover:moved"),
}

/// Every point is exercised by a test above.
#[test]
fn every_fault_point_has_a_test() {
    let tested = [
        "container-start:record",
        "container-start:shim",
        "network-ensure:bridge",
        "volume-create:dir",
        "container-stop:signalled",
        "container-remove:runtime",
        "network-remove:bridge",
        "volume-delete:trash",
        "update-promote:marked",
        "update-handover:moved",
    ];
    assert_eq!(names(&tested), names(wharf::fault::POINTS));
}
