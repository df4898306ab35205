//! The nftables firewall against the real kernel (root and `nft` needed).
//!
//! Every test runs in network namespaces it creates itself: a dedicated thread
//! unshares `CLONE_NEWNET` and runs jobs there (`nft` and `ip` children inherit the
//! thread's namespace). Nothing is bind-mounted, so each namespace, and every rule,
//! link and address in it, disappears when its thread ends, even if the test
//! panics. The host's ruleset and links are never touched.

mod common;

use common::net::privileged;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};
use serde_json::Value;
use wharf::manifest::Protocol;
use wharf::net::firewall::{self, FirewallPlan, NetRules, PortRule};

type Job = Box<dyn FnOnce() + Send>;

/// A fresh network namespace, alive as long as this value: a thread that
/// unshared it and runs jobs in it.
struct Netns {
    tid: i32,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    fn new() -> Netns {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = unshare(CloneFlags::CLONE_NEWNET).map(|()| nix::unistd::gettid());
            let ok = entered.is_ok();
            let _ = tid_tx.send(entered);
            if ok {
                for job in rx {
                    job();
                }
            }
        });
        let tid = tid_rx
            .recv()
            .expect("namespace thread died")
            .expect("unshare(CLONE_NEWNET)");
        Netns {
            tid: tid.as_raw(),
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the namespace's thread and returns its result. A panic in `f`
    /// ends the thread (and the namespace) and fails the caller.
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("namespace alive")
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("namespace thread gone (an earlier job panicked)");
        rx.recv().expect("job panicked in the namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the namespace goes with it.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a command (in the calling thread's namespace) and returns its stdout.
fn cmd(line: &str) -> String {
    let mut words = line.split_whitespace();
    let bin = words.next().unwrap();
    let out = Command::new(bin).args(words).output().unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cmds(lines: &[&str]) {
    for l in lines {
        cmd(l);
    }
}

/// The chains and the rules (as statement lists) of table `inet NAME`.
fn list_table(name: &str) -> (Vec<String>, Vec<(String, Value)>) {
    let v: Value = serde_json::from_str(&cmd(&format!("nft -j list table inet {name}"))).unwrap();
    let objs = v["nftables"].as_array().unwrap();
    let chains = objs
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str())
        .map(str::to_owned)
        .collect();
    let rules = objs
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| (r["chain"].as_str().unwrap().to_owned(), r["expr"].clone()))
        .collect();
    (chains, rules)
}

fn net(bridge: &str, subnet: &str, internal: bool) -> NetRules {
    NetRules {
        bridge: bridge.into(),
        subnet: subnet.parse().unwrap(),
        internal,
    }
}

fn port(host_port: u16, container: &str, container_port: u16, protocol: Protocol) -> PortRule {
    PortRule {
        host_ip: None,
        host_port,
        container_ip: container.parse().unwrap(),
        container_port,
        protocol,
        bridge: "whtbr0".into(),
    }
}

#[test]
fn apply_replaces_our_table_atomically_and_remove_restores_the_ruleset() {
    if !privileged("apply_replaces_our_table_atomically_and_remove_restores_the_ruleset") {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        assert_eq!(cmd("nft list ruleset").trim(), "", "a fresh namespace");
        // Someone else's table, which we must never touch.
        cmds(&[
            "nft add table inet bystander",
            "nft add chain inet bystander c { type filter hook forward priority 0 ; }",
            "nft add rule inet bystander c counter accept",
        ]);
        let before = cmd("nft list ruleset");

        let instance = format!("t{}", std::process::id());
        let table = firewall::table_name(&instance);
        let mut plan = FirewallPlan {
            instance: instance.clone(),
            networks: vec![
                net("whtbr0", "10.89.77.0/24", false),
                net("whtbr1", "10.89.78.0/24", true),
            ],
            ports: vec![
                port(18080, "10.89.77.2", 8080, Protocol::Tcp),
                port(18081, "10.89.77.2", 8081, Protocol::Udp),
            ],
        };
        firewall::apply(&plan).unwrap();
        let (chains, rules) = list_table(&table);
        assert_eq!(
            chains,
            ["prerouting", "output", "postrouting", "forward", "input"]
        );
        let in_chain = |c: &str| rules.iter().filter(|(ch, _)| ch == c).count();
        assert_eq!((in_chain("prerouting"), in_chain("output")), (2, 2));
        assert_eq!(in_chain("input"), 2, "martian loopback: accept ours, drop");
        assert_eq!(
            in_chain("postrouting"),
            3,
            "one open network: 3 masquerades"
        );
        let text = cmd(&format!("nft list table inet {table}"));
        assert!(
            text.contains("dnat ip to 10.89.77.2:8080"),
            "nft shows the DNAT:\n{text}"
        );
        assert_eq!(
            firewall::wharf_tables().unwrap(),
            std::slice::from_ref(&table)
        );

        // Same plan again: replaced, not appended to.
        firewall::apply(&plan).unwrap();
        assert_eq!(list_table(&table).1, rules, "no duplicate rules");

        // A changed plan: the old port is gone, the new one is there.
        plan.ports.remove(0);
        plan.ports
            .push(port(19090, "10.89.77.3", 90, Protocol::Tcp));
        firewall::apply(&plan).unwrap();
        let text = cmd(&format!("nft list table inet {table}"));
        assert!(!text.contains("8080"), "old port removed:\n{text}");
        assert!(text.contains("dnat ip to 10.89.77.3:90"), "{text}");
        assert_eq!(list_table(&table).1.len(), rules.len());

        // An invalid plan leaves the applied table as it was.
        let mut bad = plan.clone();
        bad.ports.push(port(19090, "10.89.77.4", 91, Protocol::Tcp));
        assert!(firewall::apply(&bad).is_err());
        assert_eq!(cmd(&format!("nft list table inet {table}")), text);

        firewall::remove(&instance).unwrap();
        assert_eq!(cmd("nft list ruleset"), before, "only our table went away");
        firewall::remove(&instance).expect("removing a missing table is success");
        assert!(firewall::wharf_tables().unwrap().is_empty());
    });
}

#[test]
fn published_ports_answer_from_another_namespace_and_from_host_loopback() {
    if !privileged("published_ports_answer_from_another_namespace_and_from_host_loopback") {
        return;
    }
    // host: the agent's namespace, with bridge whtbr0 (10.89.77.1/24) and an
    // "uplink" whtc0 (192.0.2.1/24); container: 10.89.77.2 behind the bridge;
    // client: 192.0.2.2 on the uplink, another machine as far as host can tell.
    let host = Netns::new();
    let container = Netns::new();
    let client = Netns::new();
    let (container_tid, client_tid) = (container.tid, client.tid);
    host.run(move || {
        cmds(&[
            "ip link set lo up",
            "ip link add whtbr0 type bridge",
            "ip addr add 10.89.77.1/24 dev whtbr0",
            "ip link set whtbr0 up",
            "ip link add whtv0 type veth peer name whtv1",
            "ip link set whtv0 master whtbr0 up",
            &format!("ip link set whtv1 netns {container_tid}"),
            "ip link add whtc0 type veth peer name whtc1",
            "ip addr add 192.0.2.1/24 dev whtc0",
            "ip link set whtc0 up",
            &format!("ip link set whtc1 netns {client_tid}"),
        ]);
    });
    container.run(|| {
        cmds(&[
            "ip link set lo up",
            "ip addr add 10.89.77.2/24 dev whtv1",
            "ip link set whtv1 up",
            "ip route add default via 10.89.77.1",
        ])
    });
    client.run(|| {
        cmds(&[
            "ip link set lo up",
            "ip addr add 192.0.2.2/24 dev whtc1",
            "ip link set whtc1 up",
        ])
    });

    // Sockets belong to the namespace they were created in, whichever thread
    // serves them afterwards.
    let (listener, udp) = container.run(|| {
        let l = TcpListener::bind("0.0.0.0:8080").unwrap();
        let u = UdpSocket::bind("0.0.0.0:8081").unwrap();
        (l, u)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(listener, udp, stop.clone());

    let instance = format!("e{}", std::process::id());
    let plan = FirewallPlan {
        instance: instance.clone(),
        networks: vec![net("whtbr0", "10.89.77.0/24", false)],
        ports: vec![
            port(18080, "10.89.77.2", 8080, Protocol::Tcp),
            port(18081, "10.89.77.2", 8081, Protocol::Udp),
        ],
    };
    host.run(move || {
        firewall::enable_forwarding().unwrap();
        firewall::set_route_localnet("whtbr0").unwrap();
        firewall::apply(&plan).unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            "1\n",
            "set in this namespace"
        );
    });

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let uplink = SocketAddr::from(([192, 0, 2, 1], 18080));
        // From another namespace, through prerouting; the container sees the
        // client's real address (DNAT only, no masquerade on the way in).
        let seen = client
            .run(move || tcp_ping(uplink))
            .expect("TCP from client");
        assert_eq!(seen, "pong 192.0.2.2");
        let seen = client
            .run(|| udp_ping(SocketAddr::from(([192, 0, 2, 1], 18081))))
            .expect("UDP from client");
        assert_eq!(seen, "pong 192.0.2.2");
        // From the host itself, through output + route_localnet + masquerade.
        let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 18080));
        let seen = host
            .run(move || tcp_ping(lo))
            .expect("TCP from host loopback");
        assert_eq!(seen, "pong 10.89.77.1", "loopback source masqueraded");
        let seen = host
            .run(|| udp_ping(SocketAddr::from((Ipv4Addr::LOCALHOST, 18081))))
            .expect("UDP from host loopback");
        assert_eq!(seen, "pong 10.89.77.1");

        // Without our table nothing answers: the DNAT is what did it.
        let inst = instance.clone();
        host.run(move || firewall::remove(&inst).unwrap());
        assert!(client.run(move || tcp_ping(uplink)).is_err());
        assert_eq!(host.run(|| cmd("nft list ruleset")).trim(), "");
    }));
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    drop((client, container, host));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Answers each TCP line and UDP datagram with `pong <peer ip>` until `stop`.
fn serve(listener: TcpListener, udp: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((mut conn, peer)) = listener.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_ok() {
                    let _ = writeln!(conn, "pong {}", peer.ip());
                }
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("pong {}", peer.ip()).as_bytes(), peer);
            }
        }
    })
}

fn tcp_ping(to: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn udp_ping(to: SocketAddr) -> std::io::Result<String> {
    let s = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.send_to(b"ping", to)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
