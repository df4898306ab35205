//! Name resolution inside containers: `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`, rendered as pure text and written in place.
//!
//! Containers on a shared network find each other by container name through
//! `/etc/hosts`, which the agent keeps current in every container on the network,
//! rather than through an embedded DNS server per network (podman's aardvark-dns,
//! Docker's 127.0.0.11). Why:
//!
//! - it keeps working while the agent is stopped or restarting: containers outlive
//!   the agent (see the design brief) and a resolver inside the agent would not;
//! - there is no extra process to supervise and no port 53 to bind per bridge;
//! - it is what Docker's legacy `--link` and podman's `/etc/hosts` handling do, so
//!   every libc resolves it without configuration.
//!
//! The limits: no DNS-based service discovery (no SRV records, no round-robin over
//! replicas, names are exactly `metadata.name` as manifest-v1 says), and a name
//! appears only when the agent rewrites the file: every container's hosts file is
//! rewritten when a peer joins or leaves one of its networks, so a lookup between
//! those two moments sees the old set.
//!
//! The files are bind-mounted into the container (a rename would leave the container
//! looking at the old inode), so updates go through [`write_in_place`].

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// The host's resolver configuration.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// What systemd-resolved lists as its real upstream servers; `/etc/resolv.conf`
/// there only names the local stub 127.0.0.53, which a container cannot reach
/// (Docker reads this file in that case too).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// One container as the hosts file sees it: its name and its address on each of its
/// networks, in the container's network order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub container: &'a str,
    /// `(network, address)`, first network first.
    pub addrs: Vec<(&'a str, Ipv4Addr)>,
}

/// `/etc/hosts` for `me` with `hostname`: localhost lines, `ip hostname` for each of
/// its own addresses, then one line per peer in `all` sharing a network with it, by
/// container name, with the peer's address on the first shared network (in `me`'s
/// order). `all` may contain `me`; peers are listed by name, sorted.
pub fn render_hosts(me: &Member<'_>, hostname: &str, all: &[Member<'_>]) -> String {
    let mut out = String::from(
        "# Written by wharf; rewritten when containers join or leave this container's networks.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    // The container's name resolves too when the hostname differs from it.
    let own_names = if hostname == me.container || me.container.is_empty() {
        hostname.to_owned()
    } else {
        format!("{hostname} {}", me.container)
    };
    if me.addrs.is_empty() {
        // No interface (network `none`): the Debian convention, so the hostname
        // still resolves, to a loopback address.
        out.push_str(&format!("127.0.1.1\t{own_names}\n"));
    }
    for (_, ip) in &me.addrs {
        out.push_str(&format!("{ip}\t{own_names}\n"));
    }
    let mut peers: Vec<(&str, Ipv4Addr)> = all
        .iter()
        .filter(|p| p.container != me.container)
        .filter_map(|p| {
            me.addrs.iter().find_map(|(net, _)| {
                p.addrs
                    .iter()
                    .find(|(n, _)| n == net)
                    .map(|(_, ip)| (p.container, *ip))
            })
        })
        .collect();
    peers.sort();
    peers.dedup_by_key(|(name, _)| *name);
    for (name, ip) in peers {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

/// `/etc/hostname`.
pub fn render_hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// The container's `/etc/resolv.conf` from the host's: every line kept except
/// `nameserver`s on a loopback address (127.0.0.0/8, ::1), which would point into
/// the container's own namespace where nothing listens. When no nameserver remains
/// a comment says why instead (we do not silently send queries to a public
/// resolver the operator did not choose).
pub fn render_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut nameservers = 0;
    let mut dropped = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or_default();
            // A scoped IPv6 address (`fe80::1%eth0`) is parsed without its zone.
            let parsed = addr.split('%').next().unwrap_or_default().parse::<IpAddr>();
            if parsed.is_ok_and(|ip| ip.is_loopback()) {
                dropped.push(addr.to_owned());
                continue;
            }
            nameservers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if nameservers == 0 {
        out.push_str("# wharf: the host has no nameserver a container can reach");
        if !dropped.is_empty() {
            out.push_str(&format!(
                " ({} is on the host's loopback)",
                dropped.join(", ")
            ));
        }
        out.push_str(";\n# add a non-loopback `nameserver` to the host's resolv.conf.\n");
    }
    out
}

/// Which host file to base a container's resolv.conf on: systemd-resolved's upstream
/// list when `/etc/resolv.conf` names only loopback servers and that list exists.
pub fn host_resolv_conf() -> io::Result<String> {
    let main = std::fs::read_to_string(HOST_RESOLV_CONF).or_else(|e| match e.kind() {
        io::ErrorKind::NotFound => Ok(String::new()),
        _ => Err(e),
    })?;
    let only_loopback = !render_resolv_conf(&main)
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"));
    if only_loopback {
        if let Ok(upstream) = std::fs::read_to_string(SYSTEMD_RESOLV_CONF) {
            return Ok(upstream);
        }
    }
    Ok(main)
}

/// Replaces the content of `path` keeping its inode: truncate, write. The file is
/// bind-mounted into a running container, and a bind mount pins the inode, so the usual
/// temp-file-and-rename would never be seen inside. A missing file stays missing
/// (NotFound): its container is being removed, and creating it would race the removal
/// of its folder. A reader may briefly see a short file; resolvers re-read on the next
/// lookup.
///
/// No fsync: the agent rewrites every hosts file when it starts, so one a crash cut
/// short is whole again then (fsync was 44% of the agent's CPU while 200 containers
/// came up).
pub fn write_in_place(path: &Path, content: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(false).open(path)?;
    file.set_len(0)?;
    file.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_lists_localhost_own_addresses_and_peers_on_shared_networks_only() {
        let web = Member {
            container: "web",
            addrs: vec![("default", ip("10.88.0.2")), ("backend", ip("10.89.0.2"))],
        };
        let db = Member {
            container: "db",
            addrs: vec![("backend", ip("10.89.0.3")), ("default", ip("10.88.0.3"))],
        };
        let cache = Member {
            container: "cache",
            addrs: vec![("backend", ip("10.89.0.4"))],
        };
        let lonely = Member {
            container: "lonely",
            addrs: vec![("other", ip("10.89.1.2"))],
        };
        let all = [web.clone(), db, cache, lonely];
        let got = render_hosts(&web, "web", &all);
        let lines: Vec<&str> = got.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "10.88.0.2\tweb",
                "10.89.0.2\tweb",
                // Peers by name, at the address on web's first shared network.
                "10.89.0.4\tcache",
                "10.88.0.3\tdb",
            ]
        );
        assert!(got.starts_with('#'));
    }

    #[test]
    fn hostname_different_from_the_name_resolves_both_and_none_network_uses_loopback() {
        let me = Member {
            container: "job",
            addrs: vec![],
        };
        let got = render_hosts(&me, "worker-1", &[]);
        assert!(got.contains("127.0.1.1\tworker-1 job\n"), "{got}");
        assert_eq!(render_hostname("worker-1"), "worker-1\n");
    }

    #[test]
    fn resolv_conf_drops_loopback_nameservers_and_keeps_search_and_options() {
        let host = "# from the host\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n\
                    nameserver ::1\nsearch example.com corp\noptions edns0 trust-ad\n";
        let got = render_resolv_conf(host);
        assert_eq!(
            got,
            "# from the host\nnameserver 10.0.0.2\nsearch example.com corp\noptions edns0 trust-ad\n"
        );
    }

    #[test]
    fn resolv_conf_without_reachable_nameservers_says_why() {
        let got = render_resolv_conf("nameserver 127.0.0.53\nsearch lan\n");
        assert!(got.starts_with("search lan\n"), "{got}");
        assert!(
            got.contains("127.0.0.53 is on the host's loopback"),
            "{got}"
        );
        assert!(!got.lines().any(|l| l.starts_with("nameserver")));
        assert!(render_resolv_conf("").contains("no nameserver"));
    }

    #[test]
    fn write_in_place_keeps_the_inode_and_replaces_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let missing = write_in_place(&path, "x\n").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert!(!path.exists());
        std::fs::write(&path, "").unwrap();
        write_in_place(&path, "a much longer first content\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_in_place(&path, "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }
}
