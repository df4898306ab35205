//! Privileged: the network driver end to end — networks, attachments, published
//! ports, re-adoption after an agent restart, and a teardown that leaves nothing.
//!
//! The test body runs on a thread that first unshared its own network namespace
//! (the test's "host"), so every bridge, veth, sysctl and nft table is made inside
//! it and vanishes with the thread, even on a panic. Namespace files (bind mounts
//! under temp dirs) are unmounted by a guard, pass or fail. Skips with a reason when
//! not root or without `nft`/`ip`, unless `WHARF_REQUIRE_PRIVILEGED=1` (then fails).

mod common;

use common::net::{in_test_host, privileged};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wharf::manifest::{Network, NetworkSpec, ObjectMeta, Protocol};
use wharf::net::driver::{NetError, NetworkConfig, Networks, PortMapping};
use wharf::net::link::{AttachRequest, Netlink};
use wharf::net::netns;

/// An instance id as `agent::instance_id` makes them: hex, a valid nft name.
const INSTANCE: &str = "d71e0a42";

/// Temp dirs whose namespace files are unmounted on drop, pass or fail.
struct Dirs {
    state: tempfile::TempDir,
    run: tempfile::TempDir,
    client: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        Dirs {
            state: tempfile::tempdir().unwrap(),
            run: tempfile::tempdir().unwrap(),
            client: tempfile::tempdir().unwrap(),
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for dir in [self.run.path(), self.client.path()] {
            for path in netns::list(&dir.join("netns")).unwrap_or_default() {
                if let Err(e) = netns::remove(&path) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}

fn cmd(line: &str) -> String {
    let mut words = line.split_whitespace();
    let out = Command::new(words.next().unwrap())
        .args(words)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{line}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(name, ifindex)` of every link in the test host namespace.
fn links() -> Vec<(String, u64)> {
    let v: Value = serde_json::from_str(&cmd("ip -j link")).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_owned(),
                l["ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn wharf_links() -> Vec<(String, u64)> {
    links()
        .into_iter()
        .filter(|(n, _)| n.starts_with("wh"))
        .collect()
}

fn wharf_tables() -> Vec<String> {
    let v: Value = serde_json::from_str(&cmd("nft -j list tables")).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["table"]["name"].as_str())
        .filter(|n| n.starts_with("wharf_"))
        .map(str::to_owned)
        .collect()
}

/// A TCP server in namespace `ns` answering every connection with `reply`.
fn serve_tcp(ns: &Path, addr: &str, reply: &'static str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = netns::run_in(ns, || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    spawn_tcp(listener, reply);
}

fn spawn_tcp(listener: TcpListener, reply: &'static str) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(reply.as_bytes());
        }
    });
}

/// A UDP server in `ns` answering every datagram with `reply`.
fn serve_udp(ns: &Path, addr: &str, reply: &'static str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = netns::run_in(ns, || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(reply.as_bytes(), from);
        }
    });
}

fn tcp_get(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn udp_get(addr: &str) -> std::io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(b"ping", addr)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `tcp_get` from inside namespace `ns`.
fn tcp_get_in(ns: &Path, addr: &str) -> std::io::Result<String> {
    let addr = addr.to_owned();
    netns::run_in(ns, move || tcp_get(&addr)).unwrap()
}

fn udp_get_in(ns: &Path, addr: &str) -> std::io::Result<String> {
    let addr = addr.to_owned();
    netns::run_in(ns, move || udp_get(&addr)).unwrap()
}

fn declared() -> Vec<Network> {
    vec![Network {
        metadata: ObjectMeta {
            name: "isolated".into(),
            ..ObjectMeta::default()
        },
        spec: NetworkSpec {
            subnet: Some("10.89.3.0/24".parse().unwrap()),
            internal: true,
            ..NetworkSpec::default()
        },
    }]
}

fn by_name<'a>(configs: &'a [NetworkConfig], name: &str) -> &'a NetworkConfig {
    configs.iter().find(|c| c.name == name).unwrap()
}

fn tcp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        host_ip: None,
        host_port,
        container_port,
        protocol: Protocol::Tcp,
    }
}

/// A "client" namespace outside every wharf network: on its own bridge `tcbr`
/// (192.0.2.1/24 on the test host), with a default route via it.
async fn client_netns(dirs: &Dirs) -> PathBuf {
    let path = netns::path_for(dirs.client.path(), "client");
    netns::create(&path).unwrap();
    let nl = Netlink::connect().unwrap();
    let gw = Ipv4Addr::new(192, 0, 2, 1);
    nl.ensure_bridge("tcbr", gw, 24).await.unwrap();
    nl.attach(&AttachRequest {
        bridge: "tcbr",
        host_veth: "tcveth",
        netns: &path,
        ifname: "eth0",
        addr: Ipv4Addr::new(192, 0, 2, 2),
        prefix_len: 24,
        gateway: Some(gw),
    })
    .await
    .unwrap();
    path
}

#[test]
fn networks_attach_publish_survive_a_restart_and_tear_down_to_nothing() {
    if !privileged("networks_attach_publish_survive_a_restart_and_tear_down_to_nothing") {
        return;
    }
    in_test_host(|| async {
        let dirs = Dirs::new();
        let (state, run) = (dirs.state.path().to_owned(), dirs.run.path().to_owned());
        let mut nets = Networks::new(INSTANCE, &state, &run).unwrap();

        // Resolve: default first, the declared internal network, host and none.
        let configs = nets.resolve(&declared()).unwrap();
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["default", "isolated", "host", "none"]);
        let default = by_name(&configs, "default").clone();
        let isolated = by_name(&configs, "isolated").clone();
        assert_eq!(default.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(default.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(default.bridge, "whd71e0ab0");
        assert_eq!(isolated.bridge, "whd71e0ab1");
        assert_eq!(nets.resolve(&declared()).unwrap(), configs, "stable");
        for c in &configs {
            nets.ensure_network(c).await.unwrap();
            nets.ensure_network(c).await.unwrap();
        }

        // Two containers on default reach each other and the gateway.
        let (web_ns, web) = nets
            .attach("web", std::slice::from_ref(&default))
            .await
            .unwrap();
        let (db_ns, db) = nets
            .attach("db", std::slice::from_ref(&default))
            .await
            .unwrap();
        assert_eq!(web_ns, run.join("netns/web"));
        assert_eq!(
            (web[0].ip, web[0].ifname.as_str()),
            (Ipv4Addr::new(10, 88, 0, 2), "eth0")
        );
        assert_eq!(db[0].ip, Ipv4Addr::new(10, 88, 0, 3));
        serve_tcp(&db_ns, "10.88.0.3:7000", "db");
        serve_tcp(&web_ns, "0.0.0.0:7000", "web");
        serve_udp(&web_ns, "0.0.0.0:7002", "web-udp");
        // The first contact over a bridge made a moment ago is retried, as a TCP
        // client's SYN would be: once (1 in dozens of runs) it failed within the
        // 1 s connect timeout.
        let first = common::wait_for(10, "web reaches db over the new bridge", || {
            tcp_get_in(&web_ns, "10.88.0.3:7000").ok()
        });
        assert_eq!(first, "db");
        assert_eq!(tcp_get_in(&db_ns, "10.88.0.2:7000").unwrap(), "web");
        spawn_tcp(TcpListener::bind("10.88.0.1:7001").unwrap(), "gateway");
        assert_eq!(tcp_get_in(&web_ns, "10.88.0.1:7001").unwrap(), "gateway");
        let hosts = nets.hosts_file("web", "web");
        assert!(
            hosts.contains("10.88.0.2\tweb\n") && hosts.contains("10.88.0.3\tdb\n"),
            "{hosts}"
        );

        // Published ports answer on the host's loopback and from another namespace.
        let client = client_netns(&dirs).await;
        let udp = PortMapping {
            protocol: Protocol::Udp,
            ..tcp(8082, 7002)
        };
        let mut ports = BTreeMap::from([("web".to_owned(), vec![tcp(8080, 7000), udp])]);
        assert_eq!(nets.apply_ports(&ports).unwrap(), []);
        assert_eq!(tcp_get("127.0.0.1:8080").unwrap(), "web");
        assert_eq!(tcp_get_in(&client, "192.0.2.1:8080").unwrap(), "web");
        assert_eq!(udp_get("127.0.0.1:8082").unwrap(), "web-udp");
        assert_eq!(udp_get_in(&client, "192.0.2.1:8082").unwrap(), "web-udp");

        // A host port taken on the host fails that container only.
        let _holder = TcpListener::bind("0.0.0.0:8181").unwrap();
        ports.insert("db".to_owned(), vec![tcp(8181, 7000)]);
        let errors = nets.apply_ports(&ports).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "db");
        assert!(
            errors[0].1.contains("8181/tcp is already in use"),
            "{errors:?}"
        );
        assert_eq!(tcp_get_in(&client, "192.0.2.1:8080").unwrap(), "web");

        // An internal network reaches nothing beyond its bridge.
        let (iso_ns, iso) = nets
            .attach("iso", std::slice::from_ref(&isolated))
            .await
            .unwrap();
        assert_eq!(iso[0].ip, Ipv4Addr::new(10, 89, 3, 2));
        serve_tcp(&client, "192.0.2.2:7003", "outside");
        assert_eq!(tcp_get("192.0.2.2:7003").unwrap(), "outside", "control");
        assert!(tcp_get_in(&iso_ns, "192.0.2.2:7003").is_err());
        assert!(tcp_get_in(&iso_ns, "10.88.0.3:7000").is_err());
        assert!(tcp_get_in(&db_ns, "10.89.3.2:7000").is_err());
        // ...while a default-network container does reach outside (masquerade).
        assert_eq!(tcp_get_in(&db_ns, "192.0.2.2:7003").unwrap(), "outside");

        // A network in use cannot be removed; the error names its containers.
        let err = nets.remove_network("isolated").await.unwrap_err();
        assert!(matches!(err, NetError::NetworkInUse { .. }), "{err:?}");
        assert!(err.to_string().contains("iso"), "{err}");

        // Simulated agent restart: same addresses and MACs, no link re-created.
        let before = wharf_links();
        drop(nets);
        let mut nets = Networks::new(INSTANCE, &state, &run).unwrap();
        let again = nets.resolve(&declared()).unwrap();
        assert_eq!(again, configs);
        for c in &again {
            nets.ensure_network(c).await.unwrap();
        }
        let (_, web2) = nets
            .attach("web", std::slice::from_ref(&default))
            .await
            .unwrap();
        let (_, db2) = nets
            .attach("db", std::slice::from_ref(&default))
            .await
            .unwrap();
        let (_, iso2) = nets
            .attach("iso", std::slice::from_ref(&isolated))
            .await
            .unwrap();
        assert_eq!((web2, db2, iso2), (web, db, iso));
        assert_eq!(wharf_links(), before, "no link re-created");
        assert_eq!(nets.apply_ports(&ports).unwrap().len(), 1);
        assert_eq!(tcp_get("127.0.0.1:8080").unwrap(), "web");

        // Orphans: "db" no longer exists.
        let known = ["web".to_owned(), "iso".to_owned()];
        let removed = nets.cleanup_orphans(&known).await.unwrap();
        assert_eq!(removed, ["container db"]);
        assert!(!run.join("netns/db").exists());

        // Everything goes: no wh link, no wharf_ table, no namespace, no lease.
        for c in ["web", "iso", "db"] {
            nets.detach(c).await.unwrap();
            nets.detach(c).await.unwrap();
        }
        assert!(
            tcp_get("127.0.0.1:8080").is_err(),
            "port gone with its container"
        );
        nets.remove_network("isolated").await.unwrap();
        nets.remove_network("default").await.unwrap();
        nets.teardown().await.unwrap();
        assert_eq!(wharf_links(), [], "links left");
        assert_eq!(wharf_tables(), Vec::<String>::new(), "tables left");
        assert_eq!(
            netns::list(&run.join("netns")).unwrap(),
            Vec::<PathBuf>::new()
        );
        let leases: Value = serde_json::from_str(
            &std::fs::read_to_string(state.join("networks/leases.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(leases["networks"], serde_json::json!({}), "{leases}");
        netns::remove(&client).unwrap();
    });
}

#[test]
fn a_failed_attach_undoes_its_namespace_and_lease_and_none_makes_only_a_namespace() {
    if !privileged("a_failed_attach_undoes") {
        return;
    }
    in_test_host(|| async {
        let dirs = Dirs::new();
        let (state, run) = (dirs.state.path().to_owned(), dirs.run.path().to_owned());
        let mut nets = Networks::new(INSTANCE, &state, &run).unwrap();
        let configs = nets.resolve(&[]).unwrap();
        let default = by_name(&configs, "default").clone();
        nets.ensure_network(&default).await.unwrap();

        // The bridge vanishes behind the driver's back: the veth cannot be made.
        cmd(&format!("ip link del {}", default.bridge));
        let err = nets
            .attach("web", std::slice::from_ref(&default))
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::AttachFailed { .. }), "{err:?}");
        assert!(!run.join("netns/web").exists(), "namespace undone");
        assert!(nets.members("default").is_empty(), "lease undone");

        // host and none.
        let (path, ifs) = nets
            .attach("h", &[by_name(&configs, "host").clone()])
            .await
            .unwrap();
        assert_eq!(
            (path.to_str().unwrap(), ifs.len()),
            ("/proc/self/ns/net", 0)
        );
        let (path, ifs) = nets
            .attach("n", &[by_name(&configs, "none").clone()])
            .await
            .unwrap();
        assert!(netns::exists(&path) && ifs.is_empty());
        let mixed = [by_name(&configs, "none").clone(), default.clone()];
        assert!(matches!(
            nets.attach("x", &mixed).await.unwrap_err(),
            NetError::InvalidAttach { .. }
        ));
        nets.teardown().await.unwrap();
        assert_eq!(
            netns::list(&run.join("netns")).unwrap(),
            Vec::<PathBuf>::new()
        );
        assert_eq!(wharf_tables(), Vec::<String>::new());
    });
}

/// Two agents on one host: the first makes `default` on 10.88.0.0/16; the second sees
/// that route on the first's bridge and moves its own `default` to the next free
/// subnet, instead of a second bridge on the same subnet that silently takes the
/// first's traffic. A declared subnet overlapping a route of the host (here the second
/// agent's `default`, or an "uplink" on a dummy link) is refused with a clear message,
/// and makes nothing.
#[test]
fn a_subnet_another_link_routes_is_never_used_and_default_moves_aside() {
    if !privileged("a_subnet_another_link_routes") {
        return;
    }
    in_test_host(|| async {
        let (one, two) = (Dirs::new(), Dirs::new());
        let mut first = Networks::new(INSTANCE, one.state.path(), one.run.path()).unwrap();
        first.refresh_host_routes().await.unwrap();
        let configs = first.resolve(&[]).unwrap();
        let default_one = by_name(&configs, "default").clone();
        assert_eq!(default_one.subnet.to_string(), "10.88.0.0/16");
        first.ensure_network(&default_one).await.unwrap();

        let mut second = Networks::new("0b5e55ed", two.state.path(), two.run.path()).unwrap();
        second.refresh_host_routes().await.unwrap();
        let configs = second.resolve(&[]).unwrap();
        let default_two = by_name(&configs, "default").clone();
        assert_eq!(default_two.subnet.to_string(), "10.90.0.0/16");
        second.ensure_network(&default_two).await.unwrap();
        // Kept across a restart of the second agent, whatever the routes say then.
        let mut again = Networks::new("0b5e55ed", two.state.path(), two.run.path()).unwrap();
        let configs = again.resolve(&[]).unwrap();
        assert_eq!(by_name(&configs, "default").subnet, default_two.subnet);

        // An "uplink" the tests own, then a network declared on its subnet.
        cmd("ip link add whtestup0 type bridge");
        cmd("ip addr add 198.51.100.1/24 dev whtestup0");
        cmd("ip link set whtestup0 up");
        let clash = |name: &str, subnet: &str| Network {
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            spec: NetworkSpec {
                subnet: Some(subnet.parse().unwrap()),
                ..NetworkSpec::default()
            },
        };
        first.refresh_host_routes().await.unwrap();
        let configs = first
            .resolve(&[
                clash("uplinked", "198.51.100.0/25"),
                clash("stolen", "10.90.4.0/24"),
            ])
            .unwrap();
        for (name, route, link) in [
            ("uplinked", "198.51.100.0/24", "whtestup0".to_owned()),
            ("stolen", "10.90.0.0/16", default_two.bridge.clone()),
        ] {
            let net = by_name(&configs, name).clone();
            let err = first.ensure_network(&net).await.unwrap_err();
            assert!(
                matches!(&err, NetError::SubnetOverlaps { route: r, link: l, .. }
                    if r.to_string() == route && *l == link),
                "{err}"
            );
            assert!(err.to_string().contains("choose another subnet"), "{err}");
            let links = cmd("ip -o link show");
            assert!(!links.contains(&net.bridge), "{name}: a bridge was made");
        }
        first.remove_network("default").await.unwrap();
        second.remove_network("default").await.unwrap();
    });
}

/// The real network service passes the conformance suite the reconciler's fake passes,
/// and a teardown then leaves no link, namespace or table of the instance.
#[test]
fn the_bridge_network_passes_the_conformance_suite() {
    if !privileged("bridge_network_conformance") {
        return;
    }
    in_test_host(|| async {
        let dirs = Dirs::new();
        let (state, run) = (dirs.state.path().to_owned(), dirs.run.path().to_owned());
        let nets = Networks::new(INSTANCE, &state, &run).unwrap();
        let service = wharf::net::BridgeNetwork::new(nets, &state);
        let subnet = "10.123.0.0/24".parse().unwrap();
        wharf::net::testing::conformance(&service, "c", subnet).await;
        service.teardown().await.unwrap();
        assert_eq!(wharf_links(), Vec::<(String, u64)>::new());
        assert_eq!(wharf_tables(), Vec::<String>::new());
        assert_eq!(
            netns::list(&run.join("netns")).unwrap(),
            Vec::<PathBuf>::new()
        );
    });
}
