//! The nftables firewall: NAT, published ports and network isolation for one agent
//! instance, kept in one table `inet wharf_<instance>`.
//!
//! The rules are built as pure data ([`FirewallPlan::ruleset`], in `rules.rs`) from
//! the whole desired state and applied as one atomic `nft -j -f -` batch that
//! replaces the table, so a change never leaves half a ruleset and re-applying the
//! same plan is a no-op in effect (netavark's `firewall/nft.rs` builds its batch the
//! same way, but edits a shared table rule by rule; owning a whole table per
//! instance lets us replace instead of diff).
//!
//! Host-wide side effects live in their own functions so the caller decides when to
//! make them: [`enable_forwarding`] (`net.ipv4.ip_forward=1`, which affects every
//! interface of the host's network namespace) and [`set_route_localnet`].
//!
//! Why the host's own `127.0.0.1:hostPort` works through `route_localnet` plus the
//! `output` DNAT instead of a userland proxy (docker-proxy, rootlessport): the kernel
//! path keeps published ports answering while the agent is stopped or restarting
//! (containers outlive the agent, see the design brief), copies no bytes through a
//! process, and keeps the client's connection end to end (TCP half-close, UDP
//! sessions). The price is `route_localnet=1` on our bridges only, which lets
//! packets with a 127/8 source leave through them; the `postrouting` masquerade
//! rewrites that source to the bridge address before the container sees it.

mod rules;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::manifest::Protocol;

pub use rules::{table_name, FirewallPlan, NetRules, PortRule, TABLE_PREFIX};

/// The `nft` binary (Debian package `nftables`), found on `PATH`.
const NFT: &str = "nft";

/// Where the kernel's sysctls are.
const PROC_SYS: &str = "/proc/sys";

/// What went wrong in the firewall; each variant names the failed operation.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The plan cannot be turned into rules.
    #[error("firewall plan for instance {instance:?} is invalid: {reason}")]
    CheckPlan { instance: String, reason: String },
    /// `nft` could not be run or refused the batch that replaces the table.
    #[error("applying nftables table inet {table}: {reason}")]
    ApplyTable { table: String, reason: String },
    /// `nft` could not be run or refused to delete the table.
    #[error("removing nftables table inet {table}: {reason}")]
    RemoveTable { table: String, reason: String },
    /// `nft list tables` failed or printed something unexpected.
    #[error("listing nftables tables: {reason}")]
    ListTables { reason: String },
    /// A sysctl could not be written.
    #[error("writing sysctl {}: {source}", path.display())]
    WriteSysctl { path: PathBuf, source: io::Error },
}

/// Replaces the instance's table with the rules of `plan`, atomically. Other tables
/// on the host are untouched.
pub fn apply(plan: &FirewallPlan) -> Result<(), FirewallError> {
    plan.check().map_err(|reason| FirewallError::CheckPlan {
        instance: plan.instance.clone(),
        reason,
    })?;
    let payload = to_json(&plan.ruleset());
    run_nft(&["-j", "-f", "-"], Some(&payload)).map_err(|reason| FirewallError::ApplyTable {
        table: plan.table(),
        reason,
    })?;
    Ok(())
}

/// Whether the instance's table holds what [`apply`] of `plan` puts there, counted in
/// chains and rules: false when it is gone (`nft flush ruleset`) or was cut down.
/// Counting is enough to tell a wipe from our own last apply, which it matches.
pub fn intact(plan: &FirewallPlan) -> Result<bool, FirewallError> {
    let table = plan.table();
    let Ok(out) = run_nft(&["-j", "list", "table", "inet", &table], None) else {
        return Ok(false); // no such table
    };
    let listed: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| FirewallError::ListTables {
            reason: e.to_string(),
        })?;
    let wanted: serde_json::Value =
        serde_json::from_str(&to_json(&plan.ruleset())).expect("our own ruleset is JSON");
    let count = |v: &serde_json::Value, kind: &str| {
        v["nftables"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|o| o.get(kind).is_some()).count())
    };
    // `add` commands in ours, plain objects in the listing.
    let ours = |kind: &str| {
        wanted["nftables"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|o| o.get("add").and_then(|c| c.get(kind)).is_some())
                .count()
        })
    };
    Ok(count(&listed, "chain") == ours("chain") && count(&listed, "rule") == ours("rule"))
}

/// Deletes the instance's table; a table that does not exist is success.
pub fn remove(instance: &str) -> Result<(), FirewallError> {
    let table = table_name(instance);
    let payload = to_json(&rules::removal(&table));
    run_nft(&["-j", "-f", "-"], Some(&payload))
        .map_err(|reason| FirewallError::RemoveTable { table, reason })?;
    Ok(())
}

/// The names of the `inet` tables whose name starts with [`TABLE_PREFIX`]: every
/// wharf instance's table on this host (or network namespace), so a restarted
/// agent can find leftovers by name even if its state files are lost.
pub fn wharf_tables() -> Result<Vec<String>, FirewallError> {
    let fail = |reason: String| FirewallError::ListTables { reason };
    let out = run_nft(&["-j", "list", "tables"], None).map_err(fail)?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| fail(e.to_string()))?;
    let objects = v["nftables"]
        .as_array()
        .ok_or_else(|| fail(format!("no \"nftables\" array in {out:?}")))?;
    Ok(objects
        .iter()
        .filter_map(|o| o.get("table"))
        .filter(|t| t["family"] == "inet")
        .filter_map(|t| t["name"].as_str())
        .filter(|n| n.starts_with(TABLE_PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Sets `net.ipv4.ip_forward=1`. Host-wide (every interface of this network
/// namespace routes between interfaces afterwards), which is why it is separate
/// from [`apply`] and documented for operators; without it no container reaches
/// beyond its bridge and no published port answers from outside.
pub fn enable_forwarding() -> Result<(), FirewallError> {
    write_sysctl(Path::new(PROC_SYS), "net/ipv4/ip_forward", "1")
}

/// Sets `net.ipv4.conf.<bridge>.route_localnet=1`, so the host's own connections to
/// `127.0.0.1:hostPort`, DNATed in the `output` chain, may be routed out through the
/// bridge (the kernel drops 127/8-sourced packets on other interfaces otherwise).
pub fn set_route_localnet(bridge: &str) -> Result<(), FirewallError> {
    // The name becomes a path component: refuse anything that could escape it.
    let path_safe = !bridge.is_empty() && bridge != "." && bridge != ".." && !bridge.contains('/');
    if !path_safe {
        return Err(FirewallError::WriteSysctl {
            path: PathBuf::from(PROC_SYS).join("net/ipv4/conf"),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{bridge:?} is not an interface name"),
            ),
        });
    }
    let key = format!("net/ipv4/conf/{bridge}/route_localnet");
    write_sysctl(Path::new(PROC_SYS), &key, "1")
}

/// Writes `value` to `<root>/<key>`. `/proc/sys/net` shows the network namespace
/// of the calling thread, so a thread that joined a namespace sets its sysctls.
fn write_sysctl(root: &Path, key: &str, value: &str) -> Result<(), FirewallError> {
    let path = root.join(key);
    std::fs::write(&path, value).map_err(|source| FirewallError::WriteSysctl { path, source })
}

/// Whether something on the host already holds `port` for `protocol` on `host_ip`
/// (any address when `None`): we try to bind it and let go at once.
///
/// A DNAT rule would shadow such a listener silently, so the caller refuses the
/// container that asks for it. Only "address in use" counts: any other bind error
/// (a `host_ip` that is not local, say) means no socket on this host holds it.
/// Ports published by other containers hold no socket; [`FirewallPlan::check`]
/// catches those.
pub fn port_in_use(host_ip: Option<IpAddr>, port: u16, protocol: Protocol) -> bool {
    let ip = host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let bound = match protocol {
        // std sets SO_REUSEADDR on TCP listeners; on Linux that still conflicts
        // with any socket in LISTEN on the port, and only skips TIME_WAIT ones,
        // which is what we want.
        Protocol::Tcp => TcpListener::bind((ip, port)).map(drop),
        Protocol::Udp => UdpSocket::bind((ip, port)).map(drop),
    };
    matches!(bound, Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

fn to_json(ruleset: &nftables::schema::Nftables) -> String {
    serde_json::to_string(ruleset).expect("nftables schema types always serialise")
}

/// Runs `nft ARGS`, feeding `stdin` if given, and returns its stdout. We run it
/// ourselves rather than through `nftables::helper` because the helper does not
/// capture nft's stderr, which is the only place nft says what it rejected.
fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {NFT} (is the nftables package installed?): {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads the whole batch before it prints anything, so writing first
        // and reading afterwards cannot deadlock. Dropping the pipe sends EOF.
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing the batch to {NFT}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {NFT}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{NFT} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_held_by_a_listener_is_in_use_and_free_once_closed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(port_in_use(lo, port, Protocol::Tcp));
        assert!(
            port_in_use(None, port, Protocol::Tcp),
            "wildcard clashes too"
        );
        drop(l);
        assert!(!port_in_use(lo, port, Protocol::Tcp));
    }

    #[test]
    fn udp_port_is_checked_separately_from_tcp() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(port_in_use(lo, port, Protocol::Udp));
        // Whatever TCP says, it must not be "in use" because of the UDP socket,
        // unless something else really holds it: bind to prove it is free.
        if let Ok(t) = TcpListener::bind(("127.0.0.1", port)) {
            drop(t);
            assert!(!port_in_use(lo, port, Protocol::Tcp));
        }
    }

    #[test]
    fn non_local_host_ip_is_not_in_use() {
        let far = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77)));
        assert!(!port_in_use(far, 8080, Protocol::Tcp));
    }

    #[test]
    fn sysctl_is_written_under_the_given_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        write_sysctl(dir.path(), "net/ipv4/ip_forward", "1").unwrap();
        let got = std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap();
        assert_eq!(got, "1");
        let err = write_sysctl(dir.path(), "net/nope/x", "1").unwrap_err();
        assert!(err.to_string().contains("net/nope/x"), "{err}");
    }

    #[test]
    fn route_localnet_refuses_a_name_that_escapes_the_conf_directory() {
        for bad in ["", "..", "a/b", "../../../etc"] {
            let err = set_route_localnet(bad).unwrap_err();
            assert!(matches!(err, FirewallError::WriteSysctl { .. }), "{bad:?}");
        }
    }

    #[test]
    fn invalid_plan_is_refused_before_nft_runs() {
        let plan = FirewallPlan {
            instance: "bad id".into(),
            ..FirewallPlan::default()
        };
        let err = apply(&plan).unwrap_err();
        assert!(matches!(err, FirewallError::CheckPlan { .. }), "{err:?}");
    }
}
