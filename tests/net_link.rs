//! Privileged: the kernel side of a bridge network — bridge, veth pair, addresses,
//! default route, namespace files — through `wharf::net::{link, netns}`.
//!
//! Every test runs its body on a thread that first unshared its own network namespace
//! (the test's "host"), so no bridge or veth ever appears on the real host: when the
//! thread ends its namespace and links go with it. Container namespaces are files under
//! a temp run dir, unmounted by a guard even when an assertion fails. Skips with a
//! reason when not root, unless `WHARF_REQUIRE_PRIVILEGED=1` (then it fails).

mod common;

use common::net::{in_test_host, privileged};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wharf::net::link::{self, AttachRequest, DefaultRoute, LinkError, Netlink};
use wharf::net::netns::{self, NetnsError};

/// A temp run dir whose namespace files are unmounted on drop, pass or fail.
struct RunDir {
    dir: tempfile::TempDir,
    made: Vec<PathBuf>,
}

impl RunDir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            made: Vec::new(),
        }
    }

    fn netns(&mut self, container: &str) -> PathBuf {
        let path = netns::path_for(self.dir.path(), container);
        self.made.push(path.clone());
        netns::create(&path).unwrap();
        path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        for path in &self.made {
            if let Err(e) = netns::remove(path) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 1);

fn request<'a>(
    bridge: &'a str,
    host_veth: &'a str,
    netns: &'a Path,
    addr: Ipv4Addr,
) -> AttachRequest<'a> {
    AttachRequest {
        bridge,
        host_veth,
        netns,
        ifname: "eth0",
        addr,
        prefix_len: 24,
        gateway: Some(GATEWAY),
    }
}

#[test]
fn an_attached_container_has_eth0_its_address_a_default_route_and_reaches_the_gateway() {
    if !privileged("attach") {
        return;
    }
    in_test_host(|| async {
        let mut run = RunDir::new();
        let instance = "a1b2c3d4";
        let prefix = link::link_prefix(instance);
        let bridge = link::bridge_name(instance, 0);
        let veth = link::veth_name(instance, "web", "default");
        let nl = Netlink::connect().unwrap();

        nl.ensure_bridge(&bridge, GATEWAY, 24).await.unwrap();
        let web = run.netns("web");
        let addr = Ipv4Addr::new(10, 89, 7, 2);
        let attachment = nl
            .attach(&request(&bridge, &veth, &web, addr))
            .await
            .unwrap();
        assert_eq!(attachment.host_veth, veth);
        assert_eq!(attachment.mac.len(), 17, "{attachment:?}");
        assert_eq!(
            nl.list_links_with_prefix(&prefix).await.unwrap(),
            [bridge.clone(), veth.clone()]
        );

        // Seen from inside the container's namespace.
        let (addrs, route, mac) = link::in_netns(&web, |nl| async move {
            Ok((
                nl.addresses("eth0").await?,
                nl.default_route().await?,
                nl.mac("eth0").await?,
            ))
        })
        .unwrap();
        assert_eq!(addrs, [(addr, 24)]);
        assert_eq!(
            route,
            Some(DefaultRoute {
                gateway: GATEWAY,
                link: "eth0".into()
            })
        );
        assert_eq!(mac, attachment.mac);

        // A TCP connection from the container's namespace to a listener on the
        // gateway address in the host namespace, with the container's address as source.
        let listener = TcpListener::bind((GATEWAY, 0)).unwrap();
        let target = listener.local_addr().unwrap();
        let sent = netns::run_in(&web, || -> std::io::Result<SocketAddr> {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            stream.write_all(b"ping")?;
            stream.local_addr()
        })
        .unwrap()
        .expect("connect from the container namespace to the gateway");
        assert_eq!(sent.ip(), addr);
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), addr);
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");

        // Teardown: the pair goes with its host end, then the bridge; nothing remains.
        nl.detach(&veth).await.unwrap();
        nl.detach(&veth).await.unwrap();
        let gone = link::in_netns(&web, |nl| async move { nl.addresses("eth0").await });
        assert!(
            matches!(gone, Err(LinkError::MissingLink { .. })),
            "{gone:?}"
        );
        assert_eq!(
            nl.list_links_with_prefix(&prefix).await.unwrap(),
            std::slice::from_ref(&bridge)
        );
        nl.remove_bridge(&bridge).await.unwrap();
        nl.remove_bridge(&bridge).await.unwrap();
        assert!(nl.list_links_with_prefix("wh").await.unwrap().is_empty());
    });
}

#[test]
fn ensure_bridge_twice_keeps_one_bridge_with_one_gateway_address_and_up() {
    if !privileged("ensure_bridge") {
        return;
    }
    in_test_host(|| async {
        let bridge = link::bridge_name("0e0e0e0e", 3);
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge(&bridge, GATEWAY, 24).await.unwrap();
        let mac = nl.mac(&bridge).await.unwrap();
        nl.ensure_bridge(&bridge, GATEWAY, 24).await.unwrap();
        assert_eq!(
            nl.list_links_with_prefix("wh").await.unwrap(),
            std::slice::from_ref(&bridge)
        );
        assert_eq!(nl.addresses(&bridge).await.unwrap(), [(GATEWAY, 24)]);
        assert_eq!(nl.mac(&bridge).await.unwrap(), mac, "bridge MAC is fixed");
        // Up: the gateway address answers locally.
        let listener = TcpListener::bind((GATEWAY, 0)).unwrap();
        TcpStream::connect_timeout(&listener.local_addr().unwrap(), Duration::from_secs(5))
            .unwrap();
        nl.remove_bridge(&bridge).await.unwrap();
        assert!(nl.list_links_with_prefix("wh").await.unwrap().is_empty());
    });
}

#[test]
fn a_failed_attach_deletes_the_veth_it_made_and_a_missing_bridge_makes_none() {
    if !privileged("failed_attach") {
        return;
    }
    in_test_host(|| async {
        let mut run = RunDir::new();
        let instance = "f00dfeed";
        let prefix = link::link_prefix(instance);
        let bridge = link::bridge_name(instance, 0);
        let veth = link::veth_name(instance, "db", "default");
        let nl = Netlink::connect().unwrap();
        let db = run.netns("db");

        let err = nl
            .attach(&request(&bridge, &veth, &db, Ipv4Addr::new(10, 89, 7, 3)))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::MissingLink { .. }), "{err}");
        assert!(nl.list_links_with_prefix(&prefix).await.unwrap().is_empty());

        // The veth is made, then the default route fails: the gateway is outside the
        // container's subnet, so the kernel refuses it (ENETUNREACH).
        nl.ensure_bridge(&bridge, GATEWAY, 24).await.unwrap();
        let err = nl
            .attach(&request(&bridge, &veth, &db, Ipv4Addr::new(10, 89, 8, 3)))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::ConfigureContainer { .. }), "{err}");
        assert!(err.to_string().contains("route"), "{err}");
        assert_eq!(
            nl.list_links_with_prefix(&prefix).await.unwrap(),
            std::slice::from_ref(&bridge)
        );
        // The namespace can be attached again after the failure.
        nl.attach(&request(&bridge, &veth, &db, Ipv4Addr::new(10, 89, 7, 3)))
            .await
            .unwrap();
        let removed = nl.remove_links_with_prefix(&prefix).await.unwrap();
        assert_eq!(removed, [veth.clone(), bridge.clone()]);
        assert!(nl.list_links_with_prefix("wh").await.unwrap().is_empty());
    });
}

#[test]
fn a_namespace_file_pins_a_new_namespace_until_remove_unmounts_and_deletes_it() {
    if !privileged("netns_file") {
        return;
    }
    in_test_host(|| async {
        let mut run = RunDir::new();
        let path = run.netns("web");
        assert!(netns::exists(&path));
        assert!(mounted(&path));
        let inode = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let own = inode("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inode(path.to_str().unwrap()).unwrap(), own);
        let inside = netns::run_in(&path, || inode("/proc/thread-self/ns/net").unwrap()).unwrap();
        assert_eq!(inside, inode(path.to_str().unwrap()).unwrap());
        assert_eq!(
            inode("/proc/thread-self/ns/net").unwrap(),
            own,
            "caller unchanged"
        );
        // lo is up in the new namespace: a listener on 127.0.0.1 answers there.
        netns::run_in(&path, || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        })
        .unwrap();

        assert!(matches!(
            netns::create(&path),
            Err(NetnsError::AlreadyExists { .. })
        ));
        netns::remove(&path).unwrap();
        assert!(!netns::exists(&path));
        assert!(!path.exists());
        assert!(!mounted(&path));
        netns::remove(&path).unwrap();
        assert!(netns::list(path.parent().unwrap()).unwrap().is_empty());
    });
}

/// Not a pass/fail check (machines are shared and noisy): prints the median time of
/// one attach over 100 containers on one bridge. `--nocapture` shows it.
#[test]
fn attach_timing_median_of_100_attaches_to_one_bridge() {
    if !privileged("attach_timing") {
        return;
    }
    in_test_host(|| async {
        let mut run = RunDir::new();
        let instance = "7e57a11e";
        let bridge = link::bridge_name(instance, 0);
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge(&bridge, Ipv4Addr::new(10, 89, 0, 1), 16)
            .await
            .unwrap();
        let (mut attach, mut create) = (Vec::new(), Vec::new());
        for i in 0..100u16 {
            let name = format!("c{i}");
            let start = Instant::now();
            let path = run.netns(&name);
            create.push(start.elapsed());
            let veth = link::veth_name(instance, &name, "default");
            let start = Instant::now();
            nl.attach(&AttachRequest {
                bridge: &bridge,
                host_veth: &veth,
                netns: &path,
                ifname: "eth0",
                addr: Ipv4Addr::new(10, 89, (i / 200) as u8 + 1, (i % 200) as u8 + 2),
                prefix_len: 16,
                gateway: Some(Ipv4Addr::new(10, 89, 0, 1)),
            })
            .await
            .unwrap();
            attach.push(start.elapsed());
        }
        let start = Instant::now();
        let removed = nl
            .remove_links_with_prefix(&link::link_prefix(instance))
            .await
            .unwrap();
        let teardown = start.elapsed();
        assert_eq!(removed.len(), 101);
        attach.sort();
        create.sort();
        eprintln!(
            "attach: median {:?}, p90 {:?}, max {:?}; netns create: median {:?}; \
             teardown of 100 veths and the bridge: {:?}",
            attach[50], attach[90], attach[99], create[50], teardown
        );
    });
}
