//! Decoding and checking a Container's `spec`.

mod mounts;
mod ports;

use super::check;
use super::decode::{
    boolean, duration, fields, integer, list, nonempty, one_of, port, size, string, string_list,
    string_map, Ctx,
};
use super::types::*;
use super::yaml::{Node, Value};

const SPEC_FIELDS: &[&str] = &[
    "image",
    "pullPolicy",
    "command",
    "args",
    "env",
    "workingDir",
    "user",
    "hostname",
    "ports",
    "networks",
    "mounts",
    "resources",
    "restartPolicy",
    "stopSignal",
    "stopGracePeriod",
    "healthcheck",
    "dependsOn",
    "readOnlyRootFilesystem",
    "privileged",
    "capabilities",
    "update",
];

/// Decodes a Container spec; `name` is `metadata.name` (for self-dependency checks).
/// Errors are in `cx`; the caller discards the result if any was added.
pub(crate) fn decode_container_spec(
    cx: &mut Ctx,
    node: &Node,
    name: &str,
) -> Option<ContainerSpec> {
    let f = fields(cx, node, "Container spec", SPEC_FIELDS)?;
    let mut spec = ContainerSpec::default();

    if let Some(n) = f.required(cx, "image", "a Container spec") {
        if let Some(image) = nonempty(cx, n, "image") {
            if let Err(e) = check::image_reference(&image) {
                cx.error(n.pos, e);
            }
            spec.image = image;
        }
    }
    if let Some(n) = f.get("pullPolicy") {
        spec.pull_policy = one_of(
            cx,
            n,
            "pullPolicy",
            &[
                ("IfNotPresent", PullPolicy::IfNotPresent),
                ("Always", PullPolicy::Always),
                ("Never", PullPolicy::Never),
            ],
        )
        .unwrap_or_default();
    }
    let example = "[\"/bin/api\", \"--flag\"]";
    spec.command = f
        .get("command")
        .and_then(|n| string_list(cx, n, "command", example));
    spec.args = f
        .get("args")
        .and_then(|n| string_list(cx, n, "args", example));
    if let Some(n) = f.get("env") {
        spec.env = string_map(cx, n, "env", check::env_name);
    }
    if let Some(n) = f.get("workingDir") {
        spec.working_dir = checked(cx, n, "workingDir", check::absolute_path);
    }
    if let Some(n) = f.get("user") {
        spec.user = checked(cx, n, "user", check::user);
    }
    if let Some(n) = f.get("hostname") {
        spec.hostname = checked(cx, n, "hostname", check::hostname);
    }
    if let Some(n) = f.get("networks") {
        spec.networks = decode_networks(cx, n);
    }
    if let Some(n) = f.get("ports") {
        spec.ports = ports::decode_ports(cx, n);
        if let (Some(nets), false) = (&spec.networks, spec.ports.is_empty()) {
            if nets == &["host"] || nets == &["none"] {
                cx.error(
                    n.pos,
                    format!(
                        "ports cannot be published with networks [{}]: {}",
                        nets[0],
                        if nets[0] == "host" {
                            "the container already uses the host's ports; remove ports"
                        } else {
                            "the container has no network; remove ports or networks"
                        }
                    ),
                );
            }
        }
    }
    if let Some(n) = f.get("mounts") {
        spec.mounts = mounts::decode_mounts(cx, n);
    }
    if let Some(n) = f.get("resources") {
        spec.resources = decode_resources(cx, n).filter(|r| *r != Resources::default());
    }
    if let Some(n) = f.get("restartPolicy") {
        spec.restart_policy = one_of(
            cx,
            n,
            "restartPolicy",
            &[
                ("Always", RestartPolicy::Always),
                ("OnFailure", RestartPolicy::OnFailure),
                ("Never", RestartPolicy::Never),
            ],
        )
        .unwrap_or_default();
    }
    if let Some(n) = f.get("stopSignal") {
        spec.stop_signal = string(cx, n, "stopSignal").and_then(|s| match check::signal(&s) {
            Ok(sig) => Some(sig),
            Err(e) => {
                cx.error(n.pos, e);
                None
            }
        });
    }
    if let Some(n) = f.get("stopGracePeriod") {
        spec.stop_grace_period = duration(cx, n, "stopGracePeriod");
    }
    if let Some(n) = f.get("healthcheck") {
        spec.healthcheck = decode_healthcheck(cx, n);
    }
    if let Some(n) = f.get("dependsOn") {
        spec.depends_on = decode_depends_on(cx, n, name);
    }
    if let Some(n) = f.get("readOnlyRootFilesystem") {
        spec.read_only_root_filesystem = boolean(cx, n, "readOnlyRootFilesystem").unwrap_or(false);
    }
    if let Some(n) = f.get("privileged") {
        spec.privileged = boolean(cx, n, "privileged").unwrap_or(false);
    }
    if let Some(n) = f.get("capabilities") {
        spec.capabilities = decode_capabilities(cx, n).filter(|c| *c != Capabilities::default());
    }
    if let Some(n) = f.get("update") {
        spec.update = decode_update(cx, n).filter(|u| *u != UpdateSpec::default());
        let start_first = spec
            .update
            .as_ref()
            .is_some_and(|u| u.strategy == UpdateStrategy::StartFirst);
        if start_first && spec.networks.as_deref() == Some(&["host".to_owned()]) {
            cx.error(
                n.pos,
                "update.strategy: StartFirst cannot be used with networks [host]: the new version would need the host ports the old one holds while both run; use Recreate",
            );
        }
    }
    Some(spec)
}

/// A string checked by `check`; the error goes at the value.
pub(super) fn checked(
    cx: &mut Ctx,
    node: &Node,
    name: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Option<String> {
    let s = string(cx, node, name)?;
    match check(&s) {
        Ok(()) => Some(s),
        Err(e) => {
            cx.error(node.pos, format!("{name}: {e}"));
            None
        }
    }
}

fn decode_networks(cx: &mut Ctx, node: &Node) -> Option<Vec<String>> {
    let items = list(cx, node, "networks", "[backend] or [host]")?;
    if items.is_empty() {
        cx.error(
            node.pos,
            "networks must not be empty: leave it out for [default], or write [none]",
        );
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let Some(net) = string(cx, item, "each entry of networks") else {
            continue;
        };
        if let Err(e) = check::dns_label(&net) {
            cx.error(item.pos, format!("networks: {e}"));
        } else if (net == "host" || net == "none") && items.len() > 1 {
            cx.error(
                item.pos,
                format!("networks: {net} must be the only entry (write exactly [{net}])"),
            );
        } else if out.contains(&net) {
            cx.error(item.pos, format!("networks: {net} is listed twice"));
        }
        out.push(net);
    }
    Some(out)
}

fn decode_resources(cx: &mut Ctx, node: &Node) -> Option<Resources> {
    let f = fields(cx, node, "resources", &["memory", "cpus", "pids"])?;
    let mut r = Resources::default();
    if let Some(n) = f.get("memory") {
        r.memory = size(cx, n, "resources.memory");
        if r.memory == Some(0) {
            cx.error(n.pos, "resources.memory must be more than 0");
        }
    }
    if let Some(n) = f.get("cpus") {
        r.cpus = match n.value {
            Value::Int(i, _) if i > 0 && i <= 4096 => Some(i as f64),
            Value::Float(x, _) if (0.01..=4096.0).contains(&x) => Some(x),
            _ => {
                cx.error(
                    n.pos,
                    format!(
                        "resources.cpus must be a number of cores from 0.01 to 4096, found {}",
                        super::decode::shown(n)
                    ),
                );
                None
            }
        };
    }
    if let Some(n) = f.get("pids") {
        r.pids = integer(cx, n, "resources.pids", 1, i64::MAX.into()).map(|i| i as u64);
    }
    Some(r)
}

fn decode_healthcheck(cx: &mut Ctx, node: &Node) -> Option<Healthcheck> {
    let f = fields(
        cx,
        node,
        "healthcheck",
        &[
            "exec",
            "http",
            "tcp",
            "interval",
            "timeout",
            "retries",
            "startPeriod",
        ],
    )?;
    let probes: Vec<&str> = ["exec", "http", "tcp"]
        .into_iter()
        .filter(|p| f.get(p).is_some())
        .collect();
    let probe = match probes.as_slice() {
        [] => {
            cx.error(node.pos, "healthcheck needs exactly one of exec, http, tcp");
            None
        }
        [one] => decode_probe(cx, one, f.get(one)?),
        [_, second, ..] => {
            cx.error(
                f.key_pos(second),
                format!(
                    "healthcheck needs exactly one of exec, http, tcp; found {}",
                    probes.join(" and ")
                ),
            );
            None
        }
    };
    let mut h = Healthcheck {
        probe: probe?,
        interval: Healthcheck::DEFAULT_INTERVAL,
        timeout: Healthcheck::DEFAULT_TIMEOUT,
        retries: Healthcheck::DEFAULT_RETRIES,
        start_period: Default::default(),
    };
    for (field, slot) in [("interval", &mut h.interval), ("timeout", &mut h.timeout)] {
        if let Some(n) = f.get(field) {
            let name = format!("healthcheck.{field}");
            match duration(cx, n, &name) {
                // Each probe starts a process or opens a connection: a few a second per
                // container at most.
                Some(d) if d < Healthcheck::MIN_INTERVAL => {
                    cx.error(n.pos, format!("{name} must be at least 100ms"))
                }
                Some(d) => *slot = d,
                None => {}
            }
        }
    }
    if let Some(n) = f.get("retries") {
        h.retries = integer(cx, n, "healthcheck.retries", 1, u32::MAX.into())
            .map_or(Healthcheck::DEFAULT_RETRIES, |i| i as u32);
    }
    if let Some(n) = f.get("startPeriod") {
        h.start_period = duration(cx, n, "healthcheck.startPeriod").unwrap_or_default();
    }
    Some(h)
}

fn decode_probe(cx: &mut Ctx, kind: &str, node: &Node) -> Option<Probe> {
    match kind {
        "exec" => {
            let cmd = string_list(cx, node, "healthcheck.exec", "[\"/bin/check\"]")?;
            if cmd.is_empty() {
                cx.error(node.pos, "healthcheck.exec must name a command");
                return None;
            }
            Some(Probe::Exec(cmd))
        }
        "http" => {
            let f = fields(cx, node, "healthcheck.http", &["port", "path"])?;
            let port = f
                .required(cx, "port", "healthcheck.http")
                .and_then(|n| port(cx, n, "healthcheck.http.port"));
            let path = match f.get("path") {
                Some(n) => {
                    let p = string(cx, n, "healthcheck.http.path")?;
                    if !p.starts_with('/') {
                        cx.error(
                            n.pos,
                            format!("healthcheck.http.path {p:?} must start with /"),
                        );
                    } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        cx.error(
                            n.pos,
                            format!("healthcheck.http.path {p:?} must not hold spaces or control characters; percent-encode them (%20)"),
                        );
                    }
                    p
                }
                None => "/".to_string(),
            };
            Some(Probe::Http { port: port?, path })
        }
        _ => {
            let f = fields(cx, node, "healthcheck.tcp", &["port"])?;
            let port = f
                .required(cx, "port", "healthcheck.tcp")
                .and_then(|n| port(cx, n, "healthcheck.tcp.port"))?;
            Some(Probe::Tcp { port })
        }
    }
}

fn decode_depends_on(cx: &mut Ctx, node: &Node, own_name: &str) -> Vec<Dependency> {
    let Some(items) = list(cx, node, "dependsOn", "[{name: db, condition: Healthy}]") else {
        return Vec::new();
    };
    let mut out: Vec<Dependency> = Vec::new();
    for item in items {
        // A bare name is accepted too (`dependsOn: [db]`), as in Compose.
        let (name_node, condition) = match &item.value {
            Value::Map(_) => {
                let Some(f) = fields(cx, item, "a dependsOn entry", &["name", "condition"]) else {
                    continue;
                };
                let condition =
                    f.get("condition")
                        .map_or(Some(DependencyCondition::Started), |n| {
                            one_of(
                                cx,
                                n,
                                "condition",
                                &[
                                    ("Started", DependencyCondition::Started),
                                    ("Healthy", DependencyCondition::Healthy),
                                    ("Completed", DependencyCondition::Completed),
                                ],
                            )
                        });
                let Some(n) = f.required(cx, "name", "a dependsOn entry") else {
                    continue;
                };
                (n, condition)
            }
            _ => (item, Some(DependencyCondition::Started)),
        };
        let Some(name) = string(cx, name_node, "dependsOn name") else {
            continue;
        };
        if let Err(e) = check::dns_label(&name) {
            cx.error(name_node.pos, format!("dependsOn: {e}"));
        } else if name == own_name {
            cx.error(name_node.pos, "a container cannot depend on itself");
        } else if out.iter().any(|d| d.name == name) {
            cx.error(name_node.pos, format!("dependsOn lists {name} twice"));
        }
        if let Some(condition) = condition {
            out.push(Dependency { name, condition });
        }
    }
    out
}

fn decode_capabilities(cx: &mut Ctx, node: &Node) -> Option<Capabilities> {
    let f = fields(cx, node, "capabilities", &["add", "drop"])?;
    let mut caps = Capabilities::default();
    for (field, slot) in [("add", &mut caps.add), ("drop", &mut caps.drop)] {
        let Some(n) = f.get(field) else { continue };
        let name = format!("capabilities.{field}");
        let Some(items) = list(cx, n, &name, "[NET_ADMIN]") else {
            continue;
        };
        for item in items {
            let Some(cap) = string(cx, item, &name) else {
                continue;
            };
            match check::capability(&cap) {
                Ok(c) if slot.contains(&c) => {
                    cx.error(item.pos, format!("{name} lists {cap} twice"))
                }
                Ok(c) => slot.push(c),
                Err(e) => cx.error(item.pos, format!("{name}: {e}")),
            }
        }
    }
    for cap in &caps.add {
        if cap != "ALL" && caps.drop.contains(cap) {
            cx.error(
                f.key_pos("drop"),
                format!("capability {cap} is both added and dropped"),
            );
        }
    }
    Some(caps)
}

fn decode_update(cx: &mut Ctx, node: &Node) -> Option<UpdateSpec> {
    let f = fields(cx, node, "update", &["strategy", "timeout"])?;
    let strategy = match f.get("strategy") {
        Some(n) => one_of(
            cx,
            n,
            "update.strategy",
            &[
                ("Recreate", UpdateStrategy::Recreate),
                ("StartFirst", UpdateStrategy::StartFirst),
            ],
        )?,
        None => UpdateStrategy::Recreate,
    };
    let timeout = f.get("timeout").and_then(|n| {
        let t = duration(cx, n, "update.timeout")?;
        if strategy != UpdateStrategy::StartFirst {
            cx.error(
                n.pos,
                "update.timeout applies to strategy: StartFirst only (how long the new container has to become healthy); remove it, or set the strategy",
            );
        }
        Some(t)
    });
    Some(UpdateSpec { strategy, timeout })
}
