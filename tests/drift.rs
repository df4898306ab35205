//! Drift: the host changed behind the agent's back, and the agent puts it back as the
//! manifests say, within seconds: a container's veth or its bridge deleted, the
//! nftables ruleset flushed (a firewall reload), a container's init killed or moved out
//! of its cgroup (the cgroup then removed).

mod common;

use std::process::Command;

use common::agent::{container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

/// `ip` in the agent's network namespace; panics on failure.
fn ip(agent: &Agent, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    agent.in_netns(move || {
        let out = Command::new("ip").args(&args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// The IPv4 address of `eth0` inside the container whose init is `pid`, if it has one.
fn container_ip(pid: i32) -> Option<String> {
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/proc/{pid}/ns/net"),
            "ip",
            "-j",
            "-4",
            "addr",
            "show",
            "eth0",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["addr_info"][0]["local"].as_str().map(str::to_owned)
}

fn dnat_rules(agent: &Agent) -> usize {
    let table = wharf::net::firewall::table_name(&agent.instance());
    agent.in_netns(|| {
        let out = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("dnat") && l.contains(" to "))
            .count()
    })
}

fn start_web(agent: &mut Agent) -> (i32, String) {
    agent.start();
    agent.write(
        "web.yaml",
        &container_yaml("web", "exec sleep 1000", "  ports: [\"18082:8080\"]\n"),
    );
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);
    let addr = common::wait_for(10, "an address", || container_ip(pid));
    (pid, addr)
}

#[test]
fn a_deleted_veth_or_bridge_is_made_again_with_the_same_address() {
    if !ready("drift_links") {
        return;
    }
    let mut agent = Agent::new();
    agent.resync = "1h";
    let (pid, addr) = start_web(&mut agent);
    let instance = agent.instance();
    let veth = wharf::net::link::veth_name(&instance, "web", "default");
    let bridge = wharf::net::link::bridge_name(&instance, 0);

    // The veth (and with it the container's eth0).
    ip(&agent, &["link", "del", &veth]);
    common::wait_for(5, "eth0 back", || {
        (container_ip(pid).as_deref() == Some(addr.as_str())).then_some(())
    });
    // The bridge: made again, and the container's new veth on it.
    ip(&agent, &["link", "del", &bridge]);
    common::wait_for(5, "bridge and veth back", || {
        let veth = veth.clone();
        let link = agent.in_netns(move || {
            Command::new("ip")
                .args(["-j", "link", "show", &veth])
                .output()
                .ok()
        })?;
        let v: serde_json::Value = serde_json::from_slice(&link.stdout).ok()?;
        (v[0]["master"] == bridge.as_str()).then_some(())
    });
    assert_eq!(container_ip(pid).as_deref(), Some(addr.as_str()));
    let c = agent.container("web").unwrap();
    assert_eq!((pid_of(&c), &c["restartCount"]), (pid, &0.into()), "{c}");
}

#[test]
fn a_flushed_ruleset_is_restored_with_the_published_ports() {
    if !ready("drift_firewall") {
        return;
    }
    let mut agent = Agent::new();
    agent.resync = "1h";
    start_web(&mut agent);
    assert_eq!(dnat_rules(&agent), 2);
    agent.in_netns(|| {
        let out = Command::new("nft")
            .args(["flush", "ruleset"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    assert_eq!(dnat_rules(&agent), 0);
    common::wait_for(5, "table restored", || {
        (dnat_rules(&agent) == 2).then_some(())
    });
}

#[test]
fn a_killed_init_or_one_moved_out_of_its_cgroup_is_restarted_as_the_policy_says() {
    if !ready("drift_process") {
        return;
    }
    let mut agent = Agent::new();
    let (pid, _) = start_web(&mut agent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let c = agent.wait_container("web", 5, "restarted", |c| {
        c["state"] == "running" && pid_of(c) != pid
    });
    let pid = pid_of(&c);

    // Out of its cgroup in every hierarchy, which is then removed: its limits no
    // longer hold.
    let path = format!("wharf/{}/web", agent.instance());
    let mut removed = Vec::new();
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let base = entry.path();
        let dir = base.join(&path);
        if !dir.is_dir() {
            continue;
        }
        std::fs::write(base.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        removed.push(dir);
    }
    let unified = std::path::Path::new("/sys/fs/cgroup").join(&path);
    if unified.is_dir() {
        std::fs::write("/sys/fs/cgroup/cgroup.procs", pid.to_string()).unwrap();
        std::fs::remove_dir(&unified).unwrap();
        removed.push(unified);
    }
    assert!(!removed.is_empty(), "no cgroup of the container found");
    // Noticed at the next relist (10 s at most).
    let c = agent.wait_container("web", 25, "restarted in a cgroup", |c| {
        c["state"] == "running" && pid_of(c) != pid
    });
    assert!(!common::agent::alive(pid), "the escaped process still runs");
    let message = c["lastState"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("left its cgroup"), "{c}");
    let procs = std::fs::read_to_string(removed[0].join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|p| p == pid_of(&c).to_string()),
        "{procs}"
    );
}

/// "Its rootfs unmounted" cannot happen from the host: the overlay is mounted only in
/// the container's own mount namespace (and pivoted into), so the host has no mount of
/// it for anyone to take away; the rootfs folder on the host is a plain empty folder.
#[test]
fn a_containers_rootfs_is_mounted_only_inside_its_own_mount_namespace() {
    if !ready("drift_rootfs") {
        return;
    }
    let mut agent = Agent::new();
    let (pid, _) = start_web(&mut agent);
    let rootfs = agent.run.join("containers/web/rootfs");
    assert!(rootfs.is_dir());
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = agent.state.join("containers/web").display().to_string();
    assert!(
        !host
            .lines()
            .any(|l| l.contains(&needle) || l.contains(&*rootfs.to_string_lossy())),
        "the host has a mount of the container's rootfs"
    );
    assert_eq!(
        nix::mount::umount(&rootfs),
        Err(nix::errno::Errno::EINVAL),
        "not a mount point on the host"
    );
    // Inside, its root is the overlay with its writable layer.
    let inside = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = inside
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_default();
    assert!(
        root.contains("overlay") && root.contains(&needle),
        "{inside}"
    );
}
