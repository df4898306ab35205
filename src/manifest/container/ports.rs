//! `spec.ports`: the short form `"[hostIP:]hostPort:containerPort[/tcp|/udp]"` and
//! the long form.

use std::net::IpAddr;

use crate::manifest::decode::{fields, list, one_of, port, string, Ctx};
use crate::manifest::types::{PortSpec, Protocol};
use crate::manifest::yaml::{Node, Value};

pub(super) fn decode_ports(cx: &mut Ctx, node: &Node) -> Vec<PortSpec> {
    let Some(items) = list(cx, node, "ports", "[\"8080:80\"]") else {
        return Vec::new();
    };
    let mut out: Vec<PortSpec> = Vec::new();
    for item in items {
        let port = match &item.value {
            Value::Map(_) => decode_port_long(cx, item),
            Value::Str(s) => match parse_port_short(s) {
                Ok(p) => Some(p),
                Err(e) => {
                    cx.error(item.pos, e);
                    None
                }
            },
            _ => {
                cx.error(
                    item.pos,
                    format!(
                        "each port must be \"[hostIP:]hostPort:containerPort[/tcp|/udp]\" or a mapping, found {}",
                        item.describe()
                    ),
                );
                None
            }
        };
        let Some(port) = port else { continue };
        if let Some(ip @ std::net::IpAddr::V6(_)) = port.host_ip {
            // Containers are IPv4 only for now, and nftables does not translate between
            // families: this would pass here and fail at run time.
            cx.error(
                item.pos,
                format!(
                    "hostIP {ip}: IPv6 host addresses are not supported yet; use an IPv4 address such as 127.0.0.1, or leave hostIP out for every address"
                ),
            );
            continue;
        }
        // Two bindings of one host port clash when their addresses can overlap.
        let clash = out.iter().any(|o| {
            o.host_port == port.host_port
                && o.protocol == port.protocol
                && (o.host_ip.is_none() || port.host_ip.is_none() || o.host_ip == port.host_ip)
        });
        if clash {
            cx.error(
                item.pos,
                format!(
                    "host port {}/{} is published twice",
                    port.host_port,
                    if port.protocol == Protocol::Udp {
                        "udp"
                    } else {
                        "tcp"
                    }
                ),
            );
        }
        out.push(port);
    }
    out
}

/// `"[hostIP:]hostPort:containerPort[/tcp|/udp]"`; an IPv6 host address is written
/// in brackets (`"[::1]:8080:80"`).
fn parse_port_short(s: &str) -> Result<PortSpec, String> {
    let bad = |why: &str| {
        format!("port {s:?}: {why}; expected \"[hostIP:]hostPort:containerPort[/tcp|/udp]\", e.g. \"8080:80\"")
    };
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, "tcp")) => (r, Protocol::Tcp),
        Some((r, "udp")) => (r, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be /tcp or /udp")),
        None => (s, Protocol::Tcp),
    };
    let (ip, ports) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, ports) = after
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 host address is written [addr]:"))?;
        (Some(ip), ports)
    } else {
        match rest.matches(':').count() {
            1 => (None, rest),
            2 => {
                let (ip, ports) = rest.split_once(':').unwrap_or_default();
                (Some(ip), ports)
            }
            0 => return Err(bad("the host port is missing")),
            _ => return Err(bad("too many ':'")),
        }
    };
    let host_ip = match ip {
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
        ),
        None => None,
    };
    let (host, container) = ports.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    let number = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(&format!("{p:?} is not a port number (1-65535)")))
    };
    Ok(PortSpec {
        host_ip,
        host_port: number(host)?,
        container_port: number(container)?,
        protocol,
    })
}

fn decode_port_long(cx: &mut Ctx, node: &Node) -> Option<PortSpec> {
    let f = fields(
        cx,
        node,
        "port",
        &["hostIP", "hostPort", "containerPort", "protocol"],
    )?;
    let host_ip = f.get("hostIP").and_then(|n| {
        let s = string(cx, n, "hostIP")?;
        s.parse::<IpAddr>()
            .map_err(|_| cx.error(n.pos, format!("hostIP {s:?} is not an IP address")))
            .ok()
    });
    let host_port = f
        .required(cx, "hostPort", "a port")
        .and_then(|n| port(cx, n, "hostPort"));
    let container_port = f
        .required(cx, "containerPort", "a port")
        .and_then(|n| port(cx, n, "containerPort"));
    let protocol = match f.get("protocol") {
        Some(n) => one_of(
            cx,
            n,
            "protocol",
            &[("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)],
        )?,
        None => Protocol::Tcp,
    };
    Some(PortSpec {
        host_ip,
        host_port: host_port?,
        container_port: container_port?,
        protocol,
    })
}
