//! The pure half of the firewall: [`FirewallPlan`] → one nftables table, as data.
//!
//! Shape (one table `inet wharf_<instance>`, base chains at the standard netfilter
//! priorities, all with policy accept so the host's other traffic is never decided
//! here; see <https://wiki.nftables.org/wiki-nftables/index.php/Netfilter_hooks>):
//!
//! - `prerouting` (nat, dstnat): DNAT each published port arriving from outside.
//! - `output` (nat, dstnat): the same DNAT for connections the host itself opens,
//!   which never pass `prerouting`; with `route_localnet` on the bridge this is what
//!   makes `127.0.0.1:hostPort` answer.
//! - `postrouting` (nat, srcnat): masquerade what leaves a non-internal network,
//!   what reaches a container from 127.0.0.0/8 (the loopback path above), and
//!   hairpin traffic DNATed back into the bridge it came from.
//! - `forward` (filter): internal networks are cut off from everything but their
//!   bridge; other networks are isolated from each other as in Docker, except for
//!   connections to published ports.
//! - `input` (filter): drops packets that arrive from a bridge addressed to
//!   127.0.0.0/8 unless they belong to a connection we DNATed. `route_localnet`,
//!   which the loopback path above needs, also stops the kernel from dropping such
//!   martians, so without this rule a container with `NET_RAW` (Docker's default) can
//!   send frames for 127.0.0.1 to the bridge's MAC and reach every loopback-only
//!   service of the host (CVE-2020-8558; kube-proxy's fix is the same rule, in
//!   `iptables -A INPUT ! -s 127.0.0.0/8 -d 127.0.0.0/8 ! --ctstate
//!   RELATED,ESTABLISHED,DNAT -j DROP`, scoped here to our bridges). Replies of the
//!   host's own connections to `127.0.0.1:hostPort` carry `ct status dnat` and pass.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::manifest::{Ipv4Cidr, Protocol};

/// `inet` so one table serves IPv4 today and IPv6 later; NAT in `inet` tables is
/// supported since Linux 5.2 (our machines run 6.x).
pub(super) const FAMILY: NfFamily = NfFamily::INet;

/// Prefix of every table this agent owns, so leftovers can be found by name.
pub const TABLE_PREFIX: &str = "wharf_";

// Standard hook priorities, as nft's `dstnat`, `srcnat` and `filter` keywords.
const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
const FORWARD: &str = "forward";
const INPUT: &str = "input";

/// Everything the firewall must say for one agent instance: the desired state,
/// rebuilt whole on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallPlan {
    /// The agent's instance id; the table is `wharf_<instance>`.
    pub instance: String,
    /// Every bridge network of the instance (not `host` or `none`).
    pub networks: Vec<NetRules>,
    /// Every published port of every running container.
    pub ports: Vec<PortRule>,
}

/// One bridge network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRules {
    /// The bridge's interface name.
    pub bridge: String,
    /// The network's IPv4 subnet.
    pub subnet: Ipv4Cidr,
    /// `internal: true`: no NAT, no published ports, nothing beyond the bridge.
    pub internal: bool,
}

/// One published port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    /// Host address to match; `None`: any local address.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// The container's address on `bridge`'s network.
    pub container_ip: Ipv4Addr,
    /// Port in the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The bridge of the network the container is reached on.
    pub bridge: String,
}

impl FirewallPlan {
    /// The table name: `wharf_<instance>`.
    pub fn table(&self) -> String {
        table_name(&self.instance)
    }

    /// Why the plan cannot be applied, if it cannot: an instance id that is not an
    /// nft identifier, an IPv6 host address (the containers are IPv4 and nftables
    /// does not translate between families), a port on an unknown or internal
    /// network, or two rules claiming the same host port. The caller is expected
    /// to keep such ports out; this is the last guard before the kernel.
    pub fn check(&self) -> Result<(), String> {
        let id_ok = !self.instance.is_empty()
            && self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !id_ok {
            return Err(format!(
                "instance id {:?} must be non-empty ASCII letters, digits or '_'",
                self.instance
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            let what = format!(
                "port {}:{}/{:?}",
                p.host_ip.map_or("*".to_owned(), |ip| ip.to_string()),
                p.host_port,
                p.protocol
            );
            if matches!(p.host_ip, Some(IpAddr::V6(_))) {
                return Err(format!("{what}: IPv6 host addresses are not supported yet"));
            }
            match self.networks.iter().find(|n| n.bridge == p.bridge) {
                None => return Err(format!("{what}: no network with bridge {:?}", p.bridge)),
                Some(n) if n.internal => {
                    return Err(format!("{what}: network on {:?} is internal", p.bridge))
                }
                Some(_) => {}
            }
            // A wildcard and a specific address clash too: both would match.
            let clash = self.ports[..i].iter().any(|q| {
                q.host_port == p.host_port
                    && q.protocol == p.protocol
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            });
            if clash {
                return Err(format!("{what} is published twice"));
            }
        }
        Ok(())
    }

    /// The whole table as one nft batch: `add table`, `delete table`, then the full
    /// content. nft runs a batch as one kernel transaction, so the old table is
    /// replaced atomically; the leading `add` makes the `delete` valid when the
    /// table does not exist yet (the idiom `nft -f` scripts use). Only our table is
    /// named, so other tables on the host are untouched.
    ///
    /// Ports that [`check`](Self::check) rejects are left out.
    pub fn ruleset(&self) -> Nftables<'static> {
        let table = self.table();
        let mut batch = Batch::new();
        batch.add(table_object(&table));
        batch.delete(table_object(&table));
        batch.add(table_object(&table));
        for (name, kind, hook, prio) in [
            (PREROUTING, NfChainType::NAT, NfHook::Prerouting, DSTNAT),
            (OUTPUT, NfChainType::NAT, NfHook::Output, DSTNAT),
            (POSTROUTING, NfChainType::NAT, NfHook::Postrouting, SRCNAT),
            (FORWARD, NfChainType::Filter, NfHook::Forward, FILTER),
            (INPUT, NfChainType::Filter, NfHook::Input, FILTER),
        ] {
            batch.add(NfListObject::Chain(Chain {
                family: FAMILY,
                table: table.clone().into(),
                name: name.into(),
                _type: Some(kind),
                hook: Some(hook),
                prio: Some(prio),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
        }
        let mut add = |chain: &str, expr: Vec<Statement<'static>>| {
            batch.add(NfListObject::Rule(Rule {
                family: FAMILY,
                table: table.clone().into(),
                chain: chain.to_owned().into(),
                expr: expr.into(),
                ..Rule::default()
            }));
        };

        for p in self.published_ports() {
            let dnat = dnat_rule(p);
            add(PREROUTING, dnat.clone());
            add(OUTPUT, dnat);
        }

        for n in self.networks.iter().filter(|n| !n.internal) {
            // Outbound: leaves through anything but its own bridge.
            add(
                POSTROUTING,
                vec![
                    eq(ip("saddr"), prefix(n.subnet)),
                    ne(meta(MetaKey::Oifname), string(&n.bridge)),
                    Statement::Masquerade(None),
                ],
            );
            // Loopback path: after the output DNAT the source is still 127.0.0.1,
            // which the container would answer to itself; masquerade to the bridge
            // address instead (route_localnet lets the packet out of the host).
            add(
                POSTROUTING,
                vec![
                    eq(ip("saddr"), prefix(LOOPBACK)),
                    eq(ip("daddr"), prefix(n.subnet)),
                    Statement::Masquerade(None),
                ],
            );
            // Hairpin: a container reaching a port published by a neighbour on its
            // own bridge must see the reply come from the host, not the neighbour.
            add(
                POSTROUTING,
                vec![
                    eq(meta(MetaKey::Oifname), string(&n.bridge)),
                    eq(ip("saddr"), prefix(n.subnet)),
                    is_in(ct("status"), string("dnat")),
                    Statement::Masquerade(None),
                ],
            );
        }

        // Order matters: internal drops come before the established accept, so a
        // network turned internal also cuts its existing connections.
        for n in self.networks.iter().filter(|n| n.internal) {
            add(
                FORWARD,
                vec![
                    eq(meta(MetaKey::Iifname), string(&n.bridge)),
                    ne(meta(MetaKey::Oifname), string(&n.bridge)),
                    Statement::Drop(None),
                ],
            );
            add(
                FORWARD,
                vec![
                    eq(meta(MetaKey::Oifname), string(&n.bridge)),
                    ne(meta(MetaKey::Iifname), string(&n.bridge)),
                    Statement::Drop(None),
                ],
            );
        }
        add(
            FORWARD,
            vec![
                is_in(
                    ct("state"),
                    Expression::List(vec![string("established"), string("related")]),
                ),
                Statement::Accept(None),
            ],
        );
        // Published ports are reachable from every network, as through the host.
        add(
            FORWARD,
            vec![is_in(ct("status"), string("dnat")), Statement::Accept(None)],
        );
        let open: Vec<&NetRules> = self.networks.iter().filter(|n| !n.internal).collect();
        for n in &open {
            let others: Vec<SetItem<'static>> = open
                .iter()
                .filter(|o| o.bridge != n.bridge)
                .map(|o| SetItem::Element(string(&o.bridge)))
                .collect();
            if !others.is_empty() {
                // Docker's network isolation: no routing between two bridges.
                add(
                    FORWARD,
                    vec![
                        eq(meta(MetaKey::Iifname), string(&n.bridge)),
                        eq(
                            meta(MetaKey::Oifname),
                            Expression::Named(NamedExpression::Set(others)),
                        ),
                        Statement::Drop(None),
                    ],
                );
            }
        }
        for n in &open {
            for key in [MetaKey::Iifname, MetaKey::Oifname] {
                add(
                    FORWARD,
                    vec![eq(meta(key), string(&n.bridge)), Statement::Accept(None)],
                );
            }
        }
        let bridges: Vec<SetItem<'static>> = self
            .networks
            .iter()
            .map(|n| SetItem::Element(string(&n.bridge)))
            .collect();
        if !bridges.is_empty() {
            let from_bridge_to_loopback = || {
                vec![
                    eq(
                        meta(MetaKey::Iifname),
                        Expression::Named(NamedExpression::Set(bridges.clone())),
                    ),
                    eq(ip("daddr"), prefix(LOOPBACK)),
                ]
            };
            let mut ours = from_bridge_to_loopback();
            ours.extend([is_in(ct("status"), string("dnat")), Statement::Accept(None)]);
            add(INPUT, ours);
            let mut martian = from_bridge_to_loopback();
            martian.push(Statement::Drop(None));
            add(INPUT, martian);
        }
        batch.to_nftables()
    }

    /// The ports that become DNAT rules: those [`check`](Self::check) would accept
    /// one by one (IPv4 or any host address, on a known non-internal network).
    fn published_ports(&self) -> impl Iterator<Item = &PortRule> {
        self.ports.iter().filter(|p| {
            !matches!(p.host_ip, Some(IpAddr::V6(_)))
                && self
                    .networks
                    .iter()
                    .any(|n| n.bridge == p.bridge && !n.internal)
        })
    }
}

/// The table name for an instance.
pub fn table_name(instance: &str) -> String {
    format!("{TABLE_PREFIX}{instance}")
}

/// `add table` + `delete table` for `table`: removes it atomically, and is a no-op
/// success when it does not exist.
pub fn removal(table: &str) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table_object(table));
    batch.delete(table_object(table));
    batch.to_nftables()
}

fn table_object(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: FAMILY,
        name: name.to_owned().into(),
        handle: None,
    })
}

const LOOPBACK: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(127, 0, 0, 0),
    prefix: 8,
};

/// `[ip daddr H | meta nfproto ipv4 fib daddr type local] PROTO dport P dnat ip to C:Q`
fn dnat_rule(p: &PortRule) -> Vec<Statement<'static>> {
    let mut expr = Vec::with_capacity(4);
    match p.host_ip {
        Some(host) => expr.push(eq(ip("daddr"), string(&host.to_string()))),
        None => {
            // `dnat ip to` needs an IPv4 packet; in an inet table say so explicitly.
            expr.push(eq(meta(MetaKey::Nfproto), string("ipv4")));
            expr.push(eq(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: HashSet::from([FibFlag::Daddr]),
                })),
                string("local"),
            ));
        }
    }
    let l4 = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    expr.push(eq(payload(l4, "dport"), number(p.host_port)));
    expr.push(Statement::DNAT(Some(NAT {
        addr: Some(string(&p.container_ip.to_string())),
        family: Some(nftables::stmt::NATFamily::IP),
        port: Some(number(p.container_port)),
        flags: None,
    })));
    expr
}

fn matching(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matching(left, Operator::EQ, right)
}

fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matching(left, Operator::NEQ, right)
}

fn is_in(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matching(left, Operator::IN, right)
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

fn number(n: u16) -> Expression<'static> {
    Expression::Number(u32::from(n))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ip(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

fn prefix(c: Ipv4Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(&c.addr.to_string())),
        len: u32::from(c.prefix),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn plan() -> FirewallPlan {
        FirewallPlan {
            instance: "t1".into(),
            networks: vec![
                NetRules {
                    bridge: "whbr0".into(),
                    subnet: "10.89.0.0/24".parse().unwrap(),
                    internal: false,
                },
                NetRules {
                    bridge: "whbr1".into(),
                    subnet: "10.89.1.0/24".parse().unwrap(),
                    internal: true,
                },
            ],
            ports: vec![
                PortRule {
                    host_ip: None,
                    host_port: 8080,
                    container_ip: "10.89.0.2".parse().unwrap(),
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    bridge: "whbr0".into(),
                },
                PortRule {
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                    host_port: 5353,
                    container_ip: "10.89.0.3".parse().unwrap(),
                    container_port: 53,
                    protocol: Protocol::Udp,
                    bridge: "whbr0".into(),
                },
            ],
        }
    }

    fn json_of(p: &FirewallPlan) -> Vec<Value> {
        let v = serde_json::to_value(p.ruleset()).unwrap();
        v["nftables"].as_array().unwrap().clone()
    }

    /// The rules of `chain`, each as its list of statements.
    fn rules(cmds: &[Value], chain: &str) -> Vec<Value> {
        cmds.iter()
            .filter_map(|c| c["add"]["rule"].as_object())
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn batch_replaces_only_our_table_add_delete_then_content() {
        let cmds = json_of(&plan());
        let table = json!({"family": "inet", "name": "wharf_t1"});
        assert_eq!(cmds[0], json!({"add": {"table": table}}));
        assert_eq!(cmds[1], json!({"delete": {"table": table}}));
        assert_eq!(cmds[2], json!({"add": {"table": table}}));
        for c in &cmds[3..] {
            let obj = c["add"].as_object().expect("only adds after the delete");
            let (kind, body) = obj.iter().next().unwrap();
            assert!(kind == "chain" || kind == "rule", "{c}");
            assert_eq!(body["table"], "wharf_t1");
            assert_eq!(body["family"], "inet");
        }
    }

    #[test]
    fn five_base_chains_at_standard_priorities_with_accept_policy() {
        let chains: Vec<Value> = json_of(&plan())
            .iter()
            .filter_map(|c| c["add"]["chain"].as_object().cloned())
            .map(|c| json!([c["name"], c["type"], c["hook"], c["prio"], c["policy"]]))
            .collect();
        assert_eq!(
            chains,
            vec![
                json!(["prerouting", "nat", "prerouting", -100, "accept"]),
                json!(["output", "nat", "output", -100, "accept"]),
                json!(["postrouting", "nat", "postrouting", 100, "accept"]),
                json!(["forward", "filter", "forward", 0, "accept"]),
                json!(["input", "filter", "input", 0, "accept"]),
            ]
        );
    }

    #[test]
    fn martian_loopback_from_any_bridge_is_dropped_unless_we_dnated_it() {
        let input = rules(&json_of(&plan()), "input");
        let from_bridges = json!([
            {"match": {"left": {"meta": {"key": "iifname"}}, "right": {"set": ["whbr0", "whbr1"]}, "op": "=="}},
            {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}, "op": "=="}},
        ]);
        let mut accept = from_bridges.as_array().unwrap().clone();
        accept.push(
            json!({"match": {"left": {"ct": {"key": "status"}}, "right": "dnat", "op": "in"}}),
        );
        accept.push(json!({"accept": null}));
        let mut drop = from_bridges.as_array().unwrap().clone();
        drop.push(json!({"drop": null}));
        assert_eq!(input, vec![json!(accept), json!(drop)]);
        // No network, no bridge to guard: no rule (an empty set is invalid in nft).
        let none = FirewallPlan {
            networks: Vec::new(),
            ports: Vec::new(),
            ..plan()
        };
        assert!(rules(&json_of(&none), "input").is_empty());
    }

    #[test]
    fn port_without_host_ip_is_dnated_for_any_local_address_in_prerouting_and_output() {
        let cmds = json_of(&plan());
        let want = json!([
            {"match": {"left": {"meta": {"key": "nfproto"}}, "right": "ipv4", "op": "=="}},
            {"match": {"left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local", "op": "=="}},
            {"match": {"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080, "op": "=="}},
            {"dnat": {"addr": "10.89.0.2", "family": "ip", "port": 80}}
        ]);
        assert_eq!(rules(&cmds, "prerouting")[0], want);
        assert_eq!(rules(&cmds, "output")[0], want);
    }

    #[test]
    fn port_with_host_ip_matches_that_destination_only() {
        let cmds = json_of(&plan());
        let want = json!([
            {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.1", "op": "=="}},
            {"match": {"left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353, "op": "=="}},
            {"dnat": {"addr": "10.89.0.3", "family": "ip", "port": 53}}
        ]);
        assert_eq!(rules(&cmds, "prerouting")[1], want);
        assert_eq!(rules(&cmds, "output").len(), 2);
    }

    #[test]
    fn only_non_internal_networks_are_masqueraded() {
        let post = rules(&json_of(&plan()), "postrouting");
        let text = serde_json::to_string(&post).unwrap();
        assert!(
            !text.contains("10.89.1.0"),
            "internal subnet masqueraded: {text}"
        );
        assert_eq!(
            post[0],
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.89.0.0", "len": 24}}, "op": "=="}},
                {"match": {"left": {"meta": {"key": "oifname"}}, "right": "whbr0", "op": "!="}},
                {"masquerade": null}
            ])
        );
        assert!(
            post.iter().any(|r| r.to_string().contains("127.0.0.0")),
            "loopback path"
        );
        assert!(
            post.iter().any(|r| r.to_string().contains("\"dnat\"")),
            "hairpin"
        );
    }

    #[test]
    fn internal_network_is_cut_off_before_anything_is_accepted() {
        let fwd = rules(&json_of(&plan()), "forward");
        let drop_out = json!([
            {"match": {"left": {"meta": {"key": "iifname"}}, "right": "whbr1", "op": "=="}},
            {"match": {"left": {"meta": {"key": "oifname"}}, "right": "whbr1", "op": "!="}},
            {"drop": null}
        ]);
        let drop_in = json!([
            {"match": {"left": {"meta": {"key": "oifname"}}, "right": "whbr1", "op": "=="}},
            {"match": {"left": {"meta": {"key": "iifname"}}, "right": "whbr1", "op": "!="}},
            {"drop": null}
        ]);
        assert_eq!(fwd[0], drop_out);
        assert_eq!(fwd[1], drop_in);
        assert!(fwd[2].to_string().contains("established"));
        assert!(!fwd[2..].iter().any(|r| r.to_string().contains("whbr1")));
    }

    #[test]
    fn two_open_networks_are_isolated_from_each_other() {
        let mut p = plan();
        p.networks[1].internal = false;
        let fwd = rules(&json_of(&p), "forward");
        let isolation = json!([
            {"match": {"left": {"meta": {"key": "iifname"}}, "right": "whbr0", "op": "=="}},
            {"match": {"left": {"meta": {"key": "oifname"}}, "right": {"set": ["whbr1"]}, "op": "=="}},
            {"drop": null}
        ]);
        assert!(fwd.contains(&isolation), "{fwd:#?}");
    }

    #[test]
    fn ports_on_internal_or_unknown_networks_are_refused_and_left_out() {
        let mut p = plan();
        p.ports[0].bridge = "whbr1".into();
        assert!(p.check().unwrap_err().contains("internal"));
        assert_eq!(rules(&json_of(&p), "prerouting").len(), 1);
        p.ports[0].bridge = "nope".into();
        assert!(p.check().unwrap_err().contains("no network"));
    }

    #[test]
    fn check_refuses_a_port_published_twice_and_ipv6_host_addresses() {
        assert_eq!(plan().check(), Ok(()));
        let mut p = plan();
        let mut dup = p.ports[0].clone();
        dup.host_ip = Some("192.0.2.9".parse().unwrap());
        p.ports.push(dup);
        assert!(p.check().unwrap_err().contains("twice"));

        let mut p = plan();
        let mut udp_same_port = p.ports[0].clone();
        udp_same_port.protocol = Protocol::Udp;
        p.ports.push(udp_same_port);
        assert_eq!(p.check(), Ok(()), "TCP and UDP on one port are distinct");

        let mut p = plan();
        p.ports[1].host_ip = Some("::1".parse().unwrap());
        assert!(p.check().unwrap_err().contains("IPv6"));
        assert_eq!(rules(&json_of(&p), "prerouting").len(), 1);
    }

    #[test]
    fn check_refuses_instance_ids_that_are_not_nft_identifiers() {
        for bad in ["", "a b", "x;flush ruleset", "é"] {
            let p = FirewallPlan {
                instance: bad.into(),
                ..FirewallPlan::default()
            };
            assert!(p.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn removal_is_add_then_delete_of_our_table_only() {
        let v = serde_json::to_value(removal("wharf_t1")).unwrap();
        let table = json!({"family": "inet", "name": "wharf_t1"});
        assert_eq!(
            v,
            json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
        );
    }
}
