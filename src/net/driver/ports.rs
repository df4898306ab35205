//! Which published ports go into the firewall: pure, so the rules for clashes and
//! taken ports are tested without a kernel.
//!
//! A container's ports are published on its first non-internal bridge network (in
//! the order it was attached), as Docker publishes on the container's first network.
//! A container whose ports cannot all be published gets none of them and one error
//! naming it; every other container's ports are still applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::manifest::Protocol;
use crate::net::firewall::PortRule;

use super::{ContainerAttachment, NetworkConfig, NetworkKind, PortMapping};

/// The accepted rules per container, and `(container, error)` for the refused ones.
pub(super) type Planned = (BTreeMap<String, Vec<PortRule>>, Vec<(String, String)>);

/// Plans the port rules for `desired`. `current` are the rules applied now: their
/// containers keep their host ports against newcomers, and only mappings not in it
/// are checked with `in_use` (a DNAT rule holds no socket, so our own ports never
/// look taken; a listener that appeared after we published is shadowed, as before).
pub(super) fn plan(
    desired: &BTreeMap<String, Vec<PortMapping>>,
    attached: &BTreeMap<String, ContainerAttachment>,
    networks: &BTreeMap<String, NetworkConfig>,
    current: &BTreeMap<String, Vec<PortRule>>,
    in_use: impl Fn(Option<IpAddr>, u16, Protocol) -> bool,
) -> Planned {
    let mut order: Vec<&String> = desired
        .keys()
        .filter(|c| current.contains_key(*c))
        .collect();
    order.extend(desired.keys().filter(|c| !current.contains_key(*c)));

    let mut accepted: BTreeMap<String, Vec<PortRule>> = BTreeMap::new();
    let mut errors = Vec::new();
    for container in order {
        let mappings = &desired[container];
        if mappings.is_empty() {
            continue;
        }
        let claimed: Vec<(&str, &PortRule)> = accepted
            .iter()
            .flat_map(|(c, rules)| rules.iter().map(move |r| (c.as_str(), r)))
            .collect();
        let old = current.get(container).map(Vec::as_slice).unwrap_or(&[]);
        match plan_container(
            container, mappings, attached, networks, &claimed, old, &in_use,
        ) {
            Ok(rules) => {
                accepted.insert(container.clone(), rules);
            }
            Err(e) => errors.push((container.clone(), e)),
        }
    }
    (accepted, errors)
}

fn plan_container(
    container: &str,
    mappings: &[PortMapping],
    attached: &BTreeMap<String, ContainerAttachment>,
    networks: &BTreeMap<String, NetworkConfig>,
    claimed: &[(&str, &PortRule)],
    old: &[PortRule],
    in_use: &impl Fn(Option<IpAddr>, u16, Protocol) -> bool,
) -> Result<Vec<PortRule>, String> {
    let attachment = attached
        .get(container)
        .ok_or_else(|| "cannot publish ports: the container is not attached".to_owned())?;
    let (net, config) = attachment
        .nets
        .iter()
        .find_map(|n| {
            networks
                .get(&n.network)
                .filter(|c| c.kind == NetworkKind::Bridge && !c.internal)
                .map(|c| (n, c))
        })
        .ok_or_else(|| {
            "cannot publish ports: the container is on no non-internal bridge network".to_owned()
        })?;
    let mut rules: Vec<PortRule> = Vec::with_capacity(mappings.len());
    let mut problems = Vec::new();
    for m in mappings {
        let what = describe(m.host_ip, m.host_port, m.protocol);
        if matches!(m.host_ip, Some(IpAddr::V6(_))) {
            problems.push(format!("{what}: IPv6 host addresses are not supported yet"));
            continue;
        }
        let clashes = |r: &PortRule| {
            r.host_port == m.host_port
                && r.protocol == m.protocol
                && (r.host_ip.is_none() || m.host_ip.is_none() || r.host_ip == m.host_ip)
        };
        if let Some((owner, _)) = claimed.iter().find(|(_, r)| clashes(r)) {
            problems.push(format!(
                "{what} is already published by container {owner:?}"
            ));
            continue;
        }
        if rules.iter().any(clashes) {
            problems.push(format!("{what} is published twice"));
            continue;
        }
        let is_new = !old.iter().any(|r| {
            r.host_ip == m.host_ip && r.host_port == m.host_port && r.protocol == m.protocol
        });
        if is_new && in_use(m.host_ip, m.host_port, m.protocol) {
            problems.push(format!("{what} is already in use on the host"));
            continue;
        }
        rules.push(PortRule {
            host_ip: m.host_ip,
            host_port: m.host_port,
            container_ip: net.ip,
            container_port: m.container_port,
            protocol: m.protocol,
            bridge: config.bridge.clone(),
        });
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems.join("; "))
    }
}

fn describe(host_ip: Option<IpAddr>, port: u16, protocol: Protocol) -> String {
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    match host_ip {
        Some(IpAddr::V6(ip)) => format!("host port [{ip}]:{port}/{proto}"),
        Some(ip) => format!("host port {ip}:{port}/{proto}"),
        None => format!("host port {port}/{proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::driver::ContainerNet;
    use std::net::Ipv4Addr;

    fn net(name: &str, internal: bool) -> NetworkConfig {
        NetworkConfig {
            name: name.into(),
            kind: NetworkKind::Bridge,
            subnet: "10.89.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 89, 0, 1),
            internal,
            bridge: format!("br-{name}"),
        }
    }

    fn attached(nets: &[(&str, &str, u8)]) -> BTreeMap<String, ContainerAttachment> {
        let mut out: BTreeMap<String, ContainerAttachment> = BTreeMap::new();
        for (container, network, last) in nets {
            out.entry(container.to_string())
                .or_default()
                .nets
                .push(ContainerNet {
                    network: network.to_string(),
                    ifname: "eth0".into(),
                    ip: Ipv4Addr::new(10, 89, 0, *last),
                    prefix_len: 24,
                    gateway: Ipv4Addr::new(10, 89, 0, 1),
                    mac: String::new(),
                    host_veth: String::new(),
                });
        }
        out
    }

    fn map(host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port,
            container_port,
            protocol: Protocol::Tcp,
        }
    }

    fn networks() -> BTreeMap<String, NetworkConfig> {
        [net("default", false), net("private", true)]
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect()
    }

    #[test]
    fn ports_are_published_on_the_first_non_internal_network() {
        let att = attached(&[("web", "private", 5), ("web", "default", 7)]);
        let desired = BTreeMap::from([("web".to_owned(), vec![map(8080, 80)])]);
        let (ok, errors) = plan(&desired, &att, &networks(), &BTreeMap::new(), |_, _, _| {
            false
        });
        assert!(errors.is_empty(), "{errors:?}");
        let rule = &ok["web"][0];
        assert_eq!(rule.bridge, "br-default");
        assert_eq!(rule.container_ip, Ipv4Addr::new(10, 89, 0, 7));
        assert_eq!((rule.host_port, rule.container_port), (8080, 80));
    }

    #[test]
    fn a_taken_host_port_fails_only_that_container() {
        let att = attached(&[("web", "default", 2), ("db", "default", 3)]);
        let desired = BTreeMap::from([
            ("web".to_owned(), vec![map(8080, 80)]),
            ("db".to_owned(), vec![map(5432, 5432), map(9000, 9000)]),
        ]);
        let (ok, errors) = plan(&desired, &att, &networks(), &BTreeMap::new(), |_, p, _| {
            p == 5432
        });
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "db");
        assert!(
            errors[0].1.contains("5432/tcp is already in use"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_published_port_keeps_its_owner_and_is_not_rechecked() {
        let att = attached(&[("web", "default", 2), ("new", "default", 3)]);
        let nets = networks();
        let first = BTreeMap::from([("web".to_owned(), vec![map(8080, 80)])]);
        let (current, _) = plan(&first, &att, &nets, &BTreeMap::new(), |_, _, _| false);
        // "new" sorts before "web", yet web keeps 8080; web's own rule is not
        // checked against the host again.
        let desired = BTreeMap::from([
            ("new".to_owned(), vec![map(8080, 81)]),
            ("web".to_owned(), vec![map(8080, 80)]),
        ]);
        let (ok, errors) = plan(&desired, &att, &nets, &current, |_, _, _| true);
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(errors[0].0, "new");
        assert!(
            errors[0].1.contains("published by container \"web\""),
            "{errors:?}"
        );
    }

    #[test]
    fn internal_only_unattached_and_ipv6_are_errors_naming_the_container() {
        let att = attached(&[("iso", "private", 2), ("web", "default", 3)]);
        let mut v6 = map(80, 80);
        v6.host_ip = Some("::1".parse().unwrap());
        let desired = BTreeMap::from([
            ("iso".to_owned(), vec![map(80, 80)]),
            ("ghost".to_owned(), vec![map(81, 80)]),
            ("web".to_owned(), vec![v6]),
        ]);
        let (ok, errors) = plan(&desired, &att, &networks(), &BTreeMap::new(), |_, _, _| {
            false
        });
        assert!(ok.is_empty());
        let names: Vec<&str> = errors.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["ghost", "iso", "web"]);
        assert!(errors[1].1.contains("non-internal"));
        assert!(errors[2].1.contains("IPv6"));
    }
}
