//! `wharf system reset` against a real agent in a network namespace of its own: refused
//! while the agent runs, then everything the instance made is gone (processes, links,
//! nftables table, cgroups, run dir) while images and volumes stay; a second run finds
//! nothing; `--purge` deletes the state root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::{alive, container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

/// Runs `wharf system reset` inside the agent's network namespace (where its bridges,
/// veths and table are), as a user would on the agent's host. Returns (code, stdout,
/// stderr).
fn reset(agent: &Agent, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", agent.netns.display()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_wharf"))
        .args(["system", "reset", "--state"])
        .arg(&agent.state)
        .arg("--run-dir")
        .arg(&agent.run)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Links of the instance (its prefix) in the agent's namespace.
fn instance_links(agent: &Agent) -> Vec<String> {
    let prefix = wharf::net::link::link_prefix(&agent.instance());
    agent.in_netns(move || {
        let out = Command::new("ip").args(["-j", "link"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    })
}

/// Whether the instance's nftables table exists in the agent's namespace.
fn has_table(agent: &Agent) -> bool {
    let table = wharf::net::firewall::table_name(&agent.instance());
    agent.in_netns(move || {
        let out = Command::new("nft")
            .args(["-j", "list", "tables"])
            .output()
            .unwrap();
        assert!(out.status.success(), "nft list tables: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("table"))
            .any(|t| t["name"] == table.as_str())
    })
}

/// Folders of `wharf/<instance>` in any cgroup hierarchy: v2 at the root, v1 per
/// controller, a hybrid host's `unified`.
fn instance_cgroups(agent: &Agent) -> Vec<PathBuf> {
    let rel = format!("wharf/{}", agent.instance());
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&rel)];
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            dirs.push(e.path().join(&rel));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

#[test]
fn reset_is_refused_beside_an_agent_then_removes_everything_the_instance_made() {
    if !ready("system_reset") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "backend.yaml",
        "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: 10.89.71.0/24\n",
    );
    agent.write(
        "web.yaml",
        &container_yaml(
            "web",
            "echo hi > /data/file; exec sleep 1000",
            "  ports: [\"18090:8080\"]\n  mounts: [\"webdata:/data\"]\n",
        ),
    );
    agent.write(
        "db.yaml",
        &container_yaml("db", "exec sleep 1000", "  networks: [backend]\n"),
    );
    let pids: Vec<i32> = ["web", "db"]
        .iter()
        .map(|n| pid_of(&agent.wait_container(n, 60, "running", |c| c["state"] == "running")))
        .collect();
    // What reset must remove exists (or the assertions after it prove nothing).
    let links = common::wait_for(30, "the backend bridge", || {
        let links = instance_links(&agent);
        (links.len() >= 4).then_some(links)
    });
    assert!(has_table(&agent), "no nftables table before the reset");
    assert!(
        !instance_cgroups(&agent).is_empty(),
        "no cgroup before the reset"
    );
    assert!(agent.run.exists());

    // 1. Refused while the agent holds the state root: nothing touched.
    let (code, out, err) = reset(&agent, &[]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("agent is running") && err.contains("agent.lock"),
        "{err}"
    );
    assert!(!out.contains("removed"), "{out}");
    assert!(pids.iter().all(|p| alive(*p)), "a container died");
    assert_eq!(instance_links(&agent), links);
    assert!(has_table(&agent));
    assert_eq!(agent.container("web").unwrap()["state"], "running");

    // 2. The agent stops (containers keep running); reset takes everything down.
    agent.terminate();
    assert!(
        pids.iter().all(|p| alive(*p)),
        "a container died with the agent"
    );
    let (code, out, err) = reset(&agent, &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let bridge0 = wharf::net::link::bridge_name(&agent.instance(), 0);
    let table = wharf::net::firewall::table_name(&agent.instance());
    for line in [
        "removed container web".to_owned(),
        "removed container db".to_owned(),
        format!("removed network default (bridge {bridge0})"),
        "removed network backend (bridge ".to_owned(),
        format!("removed nftables table {table}"),
        format!("removed cgroup wharf/{}", agent.instance()),
        format!("removed run dir {}", agent.run.display()),
    ] {
        assert!(out.contains(&line), "no {line:?} in:\n{out}");
    }
    assert!(out.contains("kept state root"), "{out}");

    // Nothing of the instance is left ...
    common::wait_for(10, "container processes gone", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    assert_eq!(instance_links(&agent), Vec::<String>::new());
    assert!(!has_table(&agent), "the nftables table is left");
    assert_eq!(instance_cgroups(&agent), Vec::<PathBuf>::new());
    assert!(!agent.run.exists(), "the run dir is left");
    assert!(!agent.state.join("containers/web").exists());
    // ... but images and volumes are kept.
    let (code, images) =
        common::agent::wharf(&["images", "--state", &agent.state.display().to_string()]);
    assert_eq!(code, 0);
    assert!(images.contains("test/busybox"), "{images}");
    assert_eq!(
        std::fs::read_to_string(agent.state.join("volumes/webdata/data/file")).unwrap(),
        "hi\n"
    );

    // 3. Again: nothing to remove, and success.
    let (code, out, err) = reset(&agent, &[]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("nothing to remove"), "{out}");
    assert!(!out.contains("removed "), "{out}");

    // 4. --purge deletes the state root; then there is nothing left to purge.
    let (code, out, err) = reset(&agent, &["--purge"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("removed state root {}", agent.state.display())),
        "{out}"
    );
    assert!(!agent.state.exists());
    let (code, out, err) = reset(&agent, &["--purge"]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("nothing to remove"), "{out}");
    assert!(
        !agent.state.exists(),
        "a second purge made the state root again"
    );
}
