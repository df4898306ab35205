//! Networking end to end: the real agent in a network namespace of its own (so every
//! bridge, veth and nftables rule lives there), containers on the `default` network and
//! on an `internal` one, reaching each other by name, published ports, an agent restart.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::agent::{alive, container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

/// Connects to `addr` from inside the agent's network namespace and returns what the
/// server sends.
fn fetch(agent: &Agent, addr: &str) -> Option<String> {
    let addr = addr.to_owned();
    agent.in_netns(move || {
        let mut s =
            std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let _ = s.write_all(b"ping\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (!out.is_empty()).then_some(out)
    })
}

fn links(agent: &Agent) -> Vec<String> {
    agent.in_netns(|| {
        let out = std::process::Command::new("ip")
            .args(["-j", "link"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    })
}

#[test]
fn containers_reach_each_other_by_name_ports_are_published_and_a_restart_keeps_addresses() {
    if !ready("networks_end_to_end") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "server.yaml",
        &container_yaml(
            "server",
            "while true; do echo pong | nc -l -p 8080; done",
            "  ports: [\"18080:8080\"]\n",
        ),
    );
    let server = agent.wait_container("server", 60, "running", |c| c["state"] == "running");
    let server_pid = pid_of(&server);
    let ip = server["addresses"][0]["ip"].as_str().unwrap().to_owned();
    assert_eq!(server["addresses"][0]["network"], "default", "{server}");
    assert!(ip.starts_with("10.88."), "{server}");

    // A peer on the same network finds it by name (/etc/hosts kept by the agent).
    agent.write(
        "client.yaml",
        &container_yaml(
            "client",
            "until echo ping | nc -w 1 server 8080; do sleep 0.2; done; exec sleep 1000",
            "",
        ),
    );
    agent.wait_container("client", 60, "running", |c| c["state"] == "running");
    let log = common::wait_for(30, "client reached server by name", || {
        agent
            .get("/v1/containers/client/logs")
            .filter(|(_, b)| b.contains("pong"))
    });
    assert_eq!(log.0, 200);

    // The published port answers on the agent host's loopback and on the container IP.
    let answer = common::wait_for(30, "published port", || fetch(&agent, "127.0.0.1:18080"));
    assert_eq!(answer, "pong\n");
    // (The busybox server serves one connection at a time: retry while it relistens.)
    let direct = common::wait_for(30, "container address", || {
        fetch(&agent, &format!("{ip}:8080"))
    });
    assert_eq!(direct, "pong\n");

    let (_, body) = agent.get("/v1/networks").unwrap();
    let nets: serde_json::Value = serde_json::from_str(&body).unwrap();
    let default = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "default")
        .unwrap_or_else(|| panic!("{nets}"));
    assert_eq!(default["subnet"], "10.88.0.0/16");
    assert_eq!(default["gateway"], "10.88.0.1");
    let members: Vec<&str> = default["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["client", "server"], "{default}");

    // An internal network reaches nothing outside its bridge.
    agent.write(
        "isolated.yaml",
        "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: isolated\nspec:\n  internal: true\n",
    );
    agent.write(
        "iso.yaml",
        &container_yaml(
            "iso",
            &format!("echo x | nc -w 2 {ip} 8080 && echo reached || echo blocked; exec sleep 1000"),
            "  networks: [isolated]\n",
        ),
    );
    let iso = agent.wait_container("iso", 60, "running", |c| c["state"] == "running");
    assert_eq!(iso["addresses"][0]["network"], "isolated", "{iso}");
    let log = common::wait_for(30, "iso tried", || {
        agent
            .get("/v1/containers/iso/logs")
            .filter(|(_, b)| b.contains("reached") || b.contains("blocked"))
    });
    assert!(log.1.contains("blocked"), "{}", log.1);

    // Killed agent: the port keeps answering; restarted: same process, same address.
    agent.kill();
    let while_down = common::wait_for(30, "port while the agent is down", || {
        fetch(&agent, "127.0.0.1:18080")
    });
    assert_eq!(while_down, "pong\n");
    agent.start();
    let again = agent.wait_container("server", 30, "adopted", |c| c["state"] == "running");
    assert_eq!(pid_of(&again), server_pid);
    assert_eq!(again["addresses"][0]["ip"], ip.as_str());
    assert_eq!(
        common::wait_for(30, "port after restart", || fetch(
            &agent,
            "127.0.0.1:18080"
        )),
        "pong\n"
    );

    // Removing everything leaves only loopback and the built-in default bridge.
    for f in ["server.yaml", "client.yaml", "iso.yaml", "isolated.yaml"] {
        std::fs::remove_file(agent.manifests.join(f)).unwrap();
    }
    for name in ["server", "client", "iso"] {
        common::wait_for(30, "removed", || {
            agent.container(name).is_none().then_some(())
        });
    }
    assert!(!alive(server_pid));
    let remaining = common::wait_for(30, "links gone", || {
        let l = links(&agent);
        (l.len() == 2).then_some(l)
    });
    assert!(remaining.contains(&"lo".to_owned()), "{remaining:?}");
    assert!(
        fetch(&agent, "127.0.0.1:18080").is_none(),
        "port still published"
    );
    let netns_left = std::fs::read_dir(agent.run.join("netns"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(netns_left, 0, "network namespace files left");
}

#[test]
fn changing_a_networks_subnet_replaces_it_and_its_containers() {
    if !ready("network_subnet_change") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let network = |subnet: &str| {
        format!("apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: {subnet}\n")
    };
    agent.write("backend.yaml", &network("10.89.50.0/24"));
    agent.write(
        "app.yaml",
        &container_yaml("app", "exec sleep 1000", "  networks: [backend]\n"),
    );
    let before = agent.wait_container("app", 60, "running", |c| c["state"] == "running");
    assert_eq!(before["addresses"][0]["ip"], "10.89.50.2", "{before}");

    agent.write("backend.yaml", &network("10.89.51.0/24"));
    let after = agent.wait_container("app", 60, "replaced on the new subnet", |c| {
        c["state"] == "running" && c["addresses"][0]["ip"] == "10.89.51.2"
    });
    assert_ne!(after["pid"], before["pid"]);
    assert!(!alive(pid_of(&before)));
    let (_, body) = agent.get("/v1/networks").unwrap();
    assert!(body.contains("\"subnet\":\"10.89.51.0/24\""), "{body}");
    assert!(!body.contains("10.89.50.0/24"), "{body}");

    // Removing the Network while a container uses it takes nothing down: the container
    // runs on, the network stays and both say why.
    std::fs::remove_file(agent.manifests.join("backend.yaml")).unwrap();
    let kept = agent.wait_container("app", 30, "says its network is gone", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("network backend is not declared"))
    });
    assert_eq!(kept["pid"], after["pid"]);
    assert_eq!(kept["state"], "running");
    let backend_message = common::wait_for(30, "network reports it is kept", || {
        let (_, body) = agent.get("/v1/networks")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let backend = v
            .as_array()?
            .iter()
            .find(|n| n["name"] == "backend")?
            .clone();
        backend["message"].as_str().map(str::to_owned)
    });
    assert!(
        backend_message.contains("still used by container(s) app"),
        "{backend_message}"
    );

    // Once its container is gone, the network goes too.
    std::fs::remove_file(agent.manifests.join("app.yaml")).unwrap();
    common::wait_for(30, "app removed", || {
        agent.container("app").is_none().then_some(())
    });
    common::wait_for(30, "backend removed", || {
        let (_, body) = agent.get("/v1/networks")?;
        (!body.contains("\"backend\"")).then_some(())
    });
}

#[test]
fn host_none_multiple_networks_and_udp_ports_behave_as_with_docker() {
    if !ready("network_modes") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "backend.yaml",
        "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: 10.89.60.0/24\n",
    );
    // Two networks: one interface each, in order; a UDP echo published on the host.
    agent.write(
        "multi.yaml",
        &container_yaml(
            "multi",
            "ip -o -4 addr show | tr -s ' ' | cut -d' ' -f2,4; exec sleep 1000",
            "  networks: [default, backend]\n  ports: [\"15353:5353/udp\"]\n",
        ),
    );
    agent.write(
        "hostnet.yaml",
        &container_yaml("hostnet", "exec sleep 1000", "  networks: [host]\n"),
    );
    agent.write(
        "nonet.yaml",
        &container_yaml(
            "nonet",
            "ip -o link show | cut -d' ' -f2; exec sleep 1000",
            "  networks: [none]\n",
        ),
    );

    let multi = agent.wait_container("multi", 60, "running", |c| c["state"] == "running");
    let nets: Vec<&str> = multi["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["network"].as_str().unwrap())
        .collect();
    assert_eq!(nets, ["default", "backend"], "{multi}");
    let log = common::wait_for(30, "interfaces listed", || {
        agent
            .get("/v1/containers/multi/logs")
            .filter(|(_, b)| b.contains("eth1"))
    });
    assert!(log.1.contains("eth0 10.88.0.2/16"), "{}", log.1);
    assert!(log.1.contains("eth1 10.89.60.2/24"), "{}", log.1);

    // UDP published port answers on the agent host's loopback. (Debian's busybox has no
    // UDP server applet, so the test serves inside the container's namespace itself.)
    let container_ns = agent.run.join("netns/multi");
    let server = std::thread::spawn(move || {
        wharf::net::netns::run_in(&container_ns, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..n], from).unwrap();
        })
        .unwrap()
    });
    let echoed = common::wait_for(30, "udp echo", || {
        agent.in_netns(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
            s.send_to(b"hello", "127.0.0.1:15353").ok()?;
            let mut buf = [0u8; 16];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(buf[..n].to_vec())
        })
    });
    assert_eq!(echoed, b"hello");
    server.join().unwrap();

    // host: the agent host's namespace; none: only loopback.
    let host = agent.wait_container("hostnet", 60, "running", |c| c["state"] == "running");
    let ino = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    assert_eq!(
        ino(&format!("/proc/{}/ns/net", pid_of(&host))),
        ino(agent.netns.to_str().unwrap())
    );
    agent.wait_container("nonet", 60, "running", |c| c["state"] == "running");
    let log = common::wait_for(30, "links listed", || {
        agent
            .get("/v1/containers/nonet/logs")
            .filter(|(_, b)| b.contains("lo"))
    });
    assert_eq!(log.1, "lo:\n");

    // Removing everything: no rule of ours publishes anything any more.
    for f in ["multi.yaml", "hostnet.yaml", "nonet.yaml", "backend.yaml"] {
        std::fs::remove_file(agent.manifests.join(f)).unwrap();
    }
    for name in ["multi", "hostnet", "nonet"] {
        common::wait_for(30, "removed", || {
            agent.container(name).is_none().then_some(())
        });
    }
    let rules = agent.in_netns(|| {
        let out = std::process::Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    assert!(
        !rules.contains("dnat ip to"),
        "a published port is left: {rules}"
    );
    let remaining = common::wait_for(30, "backend bridge removed", || {
        let l = links(&agent);
        (l.len() == 2).then_some(l)
    });
    assert!(remaining.contains(&"lo".to_owned()), "{remaining:?}");
}

/// A Network and its containers removed in one change are all gone at once, without
/// the periodic resync (an hour here): the containers go, then the network, each
/// removal unblocking the next. Its bridge, veths and namespace files go with them.
#[test]
fn a_network_removed_with_its_containers_goes_in_the_same_change() {
    if !ready("network_removed_with_containers") {
        return;
    }
    let mut agent = Agent::new();
    agent.resync = "1h";
    agent.start();
    agent.write(
        "backend.yaml",
        "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: 10.89.60.0/24\n",
    );
    for name in ["one", "two"] {
        agent.write(
            &format!("{name}.yaml"),
            &container_yaml(name, "exec sleep 1000", "  networks: [backend]\n"),
        );
        agent.wait_container(name, 60, "running", |c| c["state"] == "running");
    }
    // Exactly the instance's links: its bridges (`…b<index>`) and veths (`…v<hash>`).
    let prefix = wharf::net::link::link_prefix(&agent.instance());
    let ours = |agent: &Agent| -> Vec<String> {
        links(agent)
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    };
    let before = ours(&agent);
    assert_eq!(
        before.len(),
        4,
        "default, backend and two veths: {before:?}"
    );
    for file in ["backend.yaml", "one.yaml", "two.yaml"] {
        std::fs::remove_file(agent.manifests.join(file)).unwrap();
    }
    common::wait_for(20, "containers and backend removed", || {
        let (_, body) = agent.get("/v1/networks")?;
        let gone = agent.container("one").is_none()
            && agent.container("two").is_none()
            && !body.contains("\"backend\"");
        gone.then_some(())
    });
    // `default` stays (the built-in network is never removed by the manifests). The
    // veths go with their containers' namespaces, which the kernel frees in its own
    // cleanup, a moment later.
    let default = wharf::net::link::bridge_name(&agent.instance(), 0);
    common::wait_for(5, "only the default bridge left", || {
        (ours(&agent) == [default.clone()]).then_some(())
    });
    let netns_left = std::fs::read_dir(agent.run.join("netns"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(netns_left, 0, "network namespace files left");
}
