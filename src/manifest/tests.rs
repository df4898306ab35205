//! Parsing, validation and hashing, as a user meets them.

use std::time::Duration;

use super::*;

fn errors(text: &str) -> Vec<String> {
    parse_file("m.yaml", text)
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn container(text: &str) -> Container {
    let (objects, diags) = parse_file("m.yaml", text);
    assert!(diags.is_empty(), "unexpected errors: {diags:#?}");
    match objects.into_iter().next().map(|s| s.object) {
        Some(Object::Container(c)) => c,
        other => panic!("expected a container, got {other:?}"),
    }
}

fn spec(body: &str) -> String {
    format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: web\nspec:\n{body}")
}

#[test]
fn full_example_from_the_contract_parses() {
    let c = container(
        r#"
apiVersion: wharf/v1
kind: Container
metadata:
  name: api
  labels: {app: shop}
spec:
  image: registry.example.com/team/api:1.8.2
  pullPolicy: IfNotPresent
  command: ["/bin/api"]
  args: ["--listen", ":8080"]
  env:
    LOG_LEVEL: info
    RATIO: 1.10
  workingDir: /srv
  user: "1000:1000"
  hostname: api
  ports:
    - "8080:8080"
    - {hostIP: 127.0.0.1, hostPort: 9090, containerPort: 9090, protocol: UDP}
  networks: [backend]
  mounts:
    - "data:/var/lib/api"
    - "/etc/api:/etc/api:ro"
    - {type: tmpfs, target: /tmp, size: 64Mi, mode: "1770"}
    - {type: volume, source: cache, target: /cache, readOnly: false}
    - {type: bind, source: /srv/site, target: /srv/site, readOnly: true, createHostPath: true}
  resources:
    memory: 256Mi
    cpus: 1.5
    pids: 512
  restartPolicy: Always
  stopSignal: SIGTERM
  stopGracePeriod: 10s
  healthcheck:
    exec: ["/bin/check"]
    interval: 10s
    timeout: 2s
    retries: 3
    startPeriod: 0s
  dependsOn:
    - {name: db, condition: Healthy}
  readOnlyRootFilesystem: false
  privileged: false
  capabilities: {add: [NET_ADMIN], drop: [ALL]}
  update:
    strategy: Recreate
"#,
    );
    let s = &c.spec;
    assert_eq!(c.metadata.labels["app"], "shop");
    assert_eq!(s.env["RATIO"], "1.10", "numbers are kept as written");
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    assert_eq!(
        s.mounts[0],
        MountSpec::Volume {
            source: "data".into(),
            target: "/var/lib/api".into(),
            read_only: false
        }
    );
    assert!(matches!(
        &s.mounts[1],
        MountSpec::Bind {
            read_only: true,
            create_host_path: false,
            ..
        }
    ));
    assert!(matches!(
        &s.mounts[4],
        MountSpec::Bind {
            create_host_path: true,
            ..
        }
    ));
    assert_eq!(
        s.mounts[2],
        MountSpec::Tmpfs {
            target: "/tmp".into(),
            size: Some(64 << 20),
            mode: Some(0o1770),
        }
    );
    assert_eq!(s.resources.as_ref().unwrap().cpus, Some(1.5));
    assert_eq!(s.stop_grace_period, Some(Duration::from_secs(10)));
    assert_eq!(
        s.healthcheck.as_ref().unwrap().interval,
        Duration::from_secs(10)
    );
    assert_eq!(s.depends_on[0].condition, DependencyCondition::Healthy);
    let caps = s.capabilities.as_ref().unwrap();
    assert_eq!(caps.add, ["CAP_NET_ADMIN"]);
    assert_eq!(caps.drop, ["ALL"]);
    assert_eq!(s.update, None, "the default strategy is normalised away");
}

#[test]
fn minimal_container_gets_the_defaults() {
    let c = container(&spec("  image: busybox\n"));
    assert_eq!(c.spec.pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(c.spec.restart_policy, RestartPolicy::Always);
    assert!(c.spec.networks.is_none() && c.spec.ports.is_empty());
    assert!(c.unsupported_fields().is_empty());
}

#[test]
fn unknown_field_is_reported_with_line_and_column() {
    let e = errors(&spec("  image: busybox\n  imgae: busybox\n"));
    assert_eq!(
        e,
        [r#"m.yaml:7:3: unknown field "imgae" in Container spec; did you mean "image"?"#]
    );
}

#[test]
fn a_nul_or_any_character_yaml_forbids_is_an_error_with_its_position() {
    // Everything after the NUL used to be dropped: the unknown field and the drop of
    // every capability went unseen, and the file validated.
    let text = spec("  image: busybox\n\0  bogus: 1\n  capabilities: {drop: [ALL]}\n");
    assert_eq!(
        errors(&text),
        ["m.yaml:7:1: character U+0000 is not allowed in YAML; remove it (or write it as an escape in a double-quoted string)"]
    );
    for (bad, column) in [
        ("\u{7}", 10),
        ("\u{7f}", 10),
        ("\u{9b}", 10),
        ("\u{fffe}", 10),
    ] {
        let text = spec(&format!("  image: {bad}busybox\n"));
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{bad:?}: {e:?}");
        assert!(
            e[0].starts_with(&format!("m.yaml:6:{column}: character U+")),
            "{e:?}"
        );
    }
    // Tabs, NEL, non-breaking spaces and emoji are allowed.
    container(&spec(
        "  image: busybox\n  env: {A: \"x\\ty\u{85}\u{a0}🐳\"}\n",
    ));
}

#[test]
fn messages_quote_the_file_short_and_escaped() {
    let line =
        "root:$6$saltsaltsalt$0123456789abcdefghijklmnopqrstuvwxyz0123456789:19000:0:99999:7:::";
    let e = errors(&format!("{line}: 1\n"));
    assert!(!e.is_empty());
    for message in &e {
        assert!(
            !message.contains("0123456789abcdefghijklmnopqrstuvwxyz"),
            "{message}"
        );
        assert!(message.chars().count() < 400, "{message}");
    }
    let e = errors(&spec("  image: busybox\n  \"x\\u001b[31mred\": 1\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(r#"m.yaml:7:3: unknown field "x\u{1b}[31mred" in Container spec"#),
        "{e:?}"
    );
}

#[test]
fn two_errors_in_one_document_are_both_reported() {
    let e = errors(&spec(
        "  image: busybox\n  pullPolicy: Sometimes\n  restartPolicy: always\n",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("m.yaml:7:15: pullPolicy must be one of IfNotPresent, Always, Never"));
    assert!(e[1].starts_with("m.yaml:8:18: restartPolicy must be one of Always, OnFailure, Never"));
    assert!(e[1].ends_with(r#"did you mean "Always"?"#));
}

#[test]
fn errors_in_several_documents_are_all_reported() {
    let text = "apiVersion: wharf/v1\nkind: Volume\nmetadata: {name: Data}\n---\n---\n\
                apiVersion: wharf/v2\nkind: Pod\nmetadata: {name: x}\n";
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("m.yaml:3:18: metadata.name: \"Data\" is not a valid name"));
    assert!(e[0].ends_with(r#"did you mean "data"?"#));
    assert!(e[1].starts_with(r#"m.yaml:6:13: apiVersion must be "wharf/v1""#));
    assert!(e[2].starts_with("m.yaml:7:7: kind must be one of Container, Network, Volume"));
}

#[test]
fn empty_documents_are_ignored() {
    let (objects, diags) = parse_file("m.yaml", "---\n# nothing\n---\n\n...\n");
    assert!(objects.is_empty() && diags.is_empty(), "{diags:?}");
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    let e = errors(&spec(
        "  image: [busybox]\n  privileged: yes\n  command: /bin/sh\n  env: {A: [1]}\n",
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("m.yaml:6:10: image must be a string, found a list"));
    assert!(e[1].starts_with(r#"m.yaml:7:15: privileged must be true or false, found "yes""#));
    assert!(e[2].starts_with("m.yaml:8:12: command must be a list"));
    assert!(e[3].starts_with("m.yaml:9:12: env.A must be a string"));
}

#[test]
fn duplicate_keys_are_reported_with_the_first_place() {
    let e = errors(&spec(
        "  image: busybox\n  image: nginx\n  env: {A: x, A: y}\n",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("7:3: duplicate field \"image\" in Container spec (first set at line 6)"));
    assert!(e[1].contains("duplicate key \"A\" in env"));
}

#[test]
fn missing_required_fields_are_named() {
    let e = errors("apiVersion: wharf/v1\nkind: Container\nmetadata: {}\nspec: {}\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("metadata needs the field \"name\""));
    assert!(e[1].contains("a Container spec needs the field \"image\""));
}

#[test]
fn yaml_syntax_error_has_a_position_and_earlier_documents_still_count() {
    let text = format!("{}---\nkind: [\n", spec("  image: busybox\n  bogus: 1\n"));
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("m.yaml:7:3: unknown field \"bogus\""));
    assert!(
        e[1].starts_with("m.yaml:9:") || e[1].starts_with("m.yaml:10:"),
        "{e:?}"
    );
    assert!(e[1].contains("invalid YAML"));
}

#[test]
fn bad_values_name_the_fix() {
    let e = errors(&spec(
        "  image: Busybox:latest\n  stopGracePeriod: 10\n  stopSignal: SIGFOO\n  user: \"a:b:c\"\n  workingDir: srv\n  resources: {memory: 12Q}\n",
    ));
    assert_eq!(e.len(), 6, "{e:#?}");
    assert!(e[0].contains("lowercase"));
    assert!(e[1].contains("stopGracePeriod") && e[1].contains("expected e.g."));
    assert!(e[2].contains("stopSignal \"SIGFOO\" is not a signal"));
    assert!(e[3].contains("uid[:gid]"));
    assert!(e[4].contains("absolute path"));
    assert!(e[5].contains("resources.memory") && e[5].contains("64Mi"));
}

#[test]
fn ports_short_and_long_forms_are_checked() {
    let c = container(&spec(
        "  image: busybox\n  ports: [\"127.0.0.1:80:8080/udp\", \"0.0.0.0:443:443\", {hostPort: 81, containerPort: 80}]\n",
    ));
    assert_eq!(c.spec.ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(c.spec.ports[0].protocol, Protocol::Udp);
    assert_eq!(c.spec.ports[1].host_ip, Some("0.0.0.0".parse().unwrap()));
    assert_eq!(c.spec.ports[2].host_port, 81);
    // IPv6 host addresses fail validation, not the start (short and long forms).
    let e = errors(&spec(
        "  image: busybox\n  ports: [\"[::1]:443:443\", {hostIP: \"::1\", hostPort: 81, containerPort: 80}]\n",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e.iter()
            .all(|m| m.contains("hostIP ::1: IPv6 host addresses are not supported yet")),
        "{e:#?}"
    );
    let e = errors(&spec(
        "  image: busybox\n  ports: [\"80\", \"80:70000\", \"80:80/sctp\", {hostPort: 0, containerPort: 80, protocol: tcp}, \"8080:1\", \"8080:2\"]\n",
    ));
    assert_eq!(e.len(), 6, "{e:#?}");
    assert!(e[3].contains("hostPort must be between 1 and 65535"));
    assert!(e[4].contains("protocol must be one of TCP, UDP"));
    assert!(e[5].contains("host port 8080/tcp is published twice"));
}

#[test]
fn mounts_and_networks_are_checked() {
    let e = errors(&spec(
        "  image: busybox\n  networks: [host, backend]\n  mounts: [\"./data:/data\", \"data:rel\", {type: volume, source: /srv, target: /a}, {type: tmpfs, target: /t, readOnly: true}, \"a:/x\", \"b:/x\"]\n",
    ));
    assert_eq!(e.len(), 6, "{e:#?}");
    assert!(e[0].contains("host must be the only entry"));
    assert!(e[1].contains("must be an absolute path"));
    assert!(e[3].contains("use type: bind"));
    assert!(e[4].contains("unknown field \"readOnly\" in tmpfs mount"));
    assert!(e[5].contains("two mounts have the target /x"));
    let e = errors(&spec(
        "  image: busybox\n  mounts: [{type: tmpfs, target: /t, mode: 0o700}, {type: tmpfs, target: /u, mode: \"rwx\"}, {type: tmpfs, target: /v, mode: 17777}]\n",
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("tmpfs mode must be octal"), "{}", e[0]);
    assert!(e[1].contains("found \"17777\""), "{}", e[1]);
}

#[test]
fn healthcheck_needs_exactly_one_probe() {
    let e = errors(&spec("  image: busybox\n  healthcheck: {interval: 5s}\n"));
    assert!(e[0].contains("exactly one of exec, http, tcp"), "{e:?}");
    let e = errors(&spec(
        "  image: busybox\n  healthcheck: {exec: [x], tcp: {port: 80}}\n",
    ));
    assert!(e[0].contains("found exec and tcp"), "{e:?}");
}

#[test]
fn dependencies_capabilities_and_signals_are_normalised_or_rejected() {
    let c = container(&spec(
        "  image: busybox\n  dependsOn: [db]\n  stopSignal: quit\n  capabilities: {add: [cap_net_raw]}\n  update: {strategy: StartFirst}\n",
    ));
    assert_eq!(c.spec.depends_on[0].condition, DependencyCondition::Started);
    assert_eq!(c.spec.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.spec.capabilities.as_ref().unwrap().add, ["CAP_NET_RAW"]);
    assert_eq!(
        c.spec.update.as_ref().map(|u| u.strategy),
        Some(UpdateStrategy::StartFirst)
    );
    let e = errors(&spec(
        "  image: busybox\n  networks: [host]\n  update: {strategy: StartFirst}\n",
    ));
    assert!(
        e[0].contains("StartFirst cannot be used with networks [host]"),
        "{e:?}"
    );
    let e = errors(&spec(
        "  image: busybox\n  dependsOn: [web, {name: db, condition: Ready}]\n  capabilities: {add: [NET_ADMN]}\n",
    ));
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].contains("cannot depend on itself"));
    assert!(e[1].contains("condition must be one of Started, Healthy, Completed"));
    assert!(e[2].contains("did you mean \"NET_ADMIN\"?"));
}

#[test]
fn host_and_none_networks_are_supported_and_reject_ports() {
    let c = container(&spec("  image: busybox\n  networks: [host]\n"));
    assert!(c.unsupported_fields().is_empty());
    let e = errors(&spec(
        "  image: busybox\n  networks: [none]\n  ports: [\"80:80\"]\n",
    ));
    assert!(
        e[0].contains("ports cannot be published with networks [none]"),
        "{e:?}"
    );
}

#[test]
fn networks_are_checked() {
    let net = |spec: &str| {
        format!("apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n{spec}")
    };
    let (objects, diags) = parse_file(
        "n.yaml",
        &net("  subnet: 10.89.1.0/24\n  gateway: 10.89.1.254\n  ipv6: {subnet: \"fd00:89:1::/64\"}\n"),
    );
    assert!(diags.is_empty(), "{diags:?}");
    let Object::Network(n) = &objects[0].object else {
        panic!()
    };
    assert_eq!(n.spec.subnet.unwrap().to_string(), "10.89.1.0/24");
    let e = errors(&net(
        "  subnet: 10.89.1.5/24\n  gateway: 10.90.0.1\n  internal: 1\n",
    ));
    // The gateway is not checked against a subnet that is itself wrong.
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("did you mean 10.89.1.0/24?"));
    assert!(e[1].contains("internal must be true or false"));
    let e = errors(&net("  subnet: 10.88.4.0/24\n  gateway: 10.88.4.1\n"));
    assert!(
        e[0].contains("overlaps the built-in network \"default\""),
        "{e:?}"
    );
    let e = errors(&net("  subnet: 10.89.1.0/24\n  gateway: 10.89.2.1\n"));
    assert!(
        e[0].contains("gateway 10.89.2.1 is outside the subnet 10.89.1.0/24"),
        "{e:?}"
    );
    let e = errors("apiVersion: wharf/v1\nkind: Network\nmetadata: {name: default}\n");
    assert!(e[0].contains("reserved"), "{e:?}");
}

#[test]
fn volumes_are_checked() {
    let (objects, diags) = parse_file(
        "v.yaml",
        "apiVersion: wharf/v1\nkind: Volume\nmetadata: {name: data}\nspec: {reclaimPolicy: Delete}\n",
    );
    assert!(diags.is_empty());
    assert_eq!(objects[0].object.key(), "Volume/data");
    let e = errors(
        "apiVersion: wharf/v1\nkind: Volume\nmetadata: {name: data}\nspec: {reclaimPolicy: Keep}\n",
    );
    assert!(
        e[0].contains("reclaimPolicy must be one of Retain, Delete"),
        "{e:?}"
    );
}

#[test]
fn sourced_points_at_the_name() {
    let (objects, _) = parse_file(
        "m.yaml",
        &format!("# c\n---\n{}", spec("  image: busybox\n")),
    );
    assert_eq!((objects[0].line, objects[0].column), (6, 9));
}

#[test]
fn default_written_explicitly_does_not_change_hash() {
    let plain = container(&spec("  image: busybox\n"));
    let explicit = container(&spec(
        "  image: busybox\n  pullPolicy: IfNotPresent\n  restartPolicy: Always\n  privileged: false\n  readOnlyRootFilesystem: false\n  networks: [default]\n  hostname: web\n  env: {}\n  ports: []\n  mounts: []\n  resources: {}\n  capabilities: {add: []}\n  update: {strategy: Recreate}\n",
    ));
    assert_eq!(plain.spec_hash(), explicit.spec_hash());
    assert!(changed_fields(&plain, &explicit).is_empty());
    let hc = |extra: &str| {
        container(&spec(&format!(
            "  image: busybox\n  healthcheck:\n    tcp: {{port: 80}}\n{extra}"
        )))
    };
    assert_eq!(
        hc("").spec_hash(),
        hc("    interval: 30s\n    timeout: 30s\n    retries: 3\n    startPeriod: 0s\n")
            .spec_hash()
    );
}

#[test]
fn annotation_change_does_not_change_hash() {
    let a = container(&spec("  image: busybox\n"));
    let mut b = a.clone();
    b.metadata.annotations.insert("note".into(), "x".into());
    b.spec.stop_grace_period = Some(Duration::from_secs(3));
    b.spec.depends_on.push(Dependency {
        name: "db".into(),
        condition: DependencyCondition::Healthy,
    });
    b.spec.update = Some(UpdateSpec {
        strategy: UpdateStrategy::StartFirst,
        timeout: Some(std::time::Duration::from_secs(60)),
    });
    assert_eq!(a.spec_hash(), b.spec_hash());
    assert!(changed_fields(&a, &b).is_empty());
}

#[test]
fn image_and_label_changes_change_hash_and_are_named() {
    let a = container(&spec("  image: busybox\n"));
    let mut b = a.clone();
    b.spec.image = "busybox:1.36".into();
    b.metadata.labels.insert("app".into(), "shop".into());
    assert_ne!(a.spec_hash(), b.spec_hash());
    assert_eq!(changed_fields(&a, &b), ["metadata.labels", "spec.image"]);
    assert_eq!(a.spec_hash().len(), 64);
}

#[test]
fn objects_round_trip_through_json() {
    let c = container(&spec(
        "  image: busybox\n  stopGracePeriod: 1m30s\n  healthcheck: {http: {port: 80}, interval: 500ms}\n  mounts: [\"/a:/b:ro\", {type: tmpfs, target: /t}]\n  ports: [\"1.2.3.4:80:80/udp\"]\n  resources: {cpus: 2}\n",
    ));
    let object = Object::Container(c.clone());
    let json = serde_json::to_string(&object).unwrap();
    let back: Object = serde_json::from_str(&json).unwrap();
    assert_eq!(back, object, "{json}");
    assert_eq!(c.spec_hash(), {
        let Object::Container(b) = back else { panic!() };
        b.spec_hash()
    });
}

#[test]
fn diagnostic_display_is_file_line_column_message() {
    assert_eq!(
        Diagnostic::at("a.yaml", 3, 5, "bad").to_string(),
        "a.yaml:3:5: bad"
    );
    assert_eq!(
        Diagnostic::file("a.yaml", "gone").to_string(),
        "a.yaml: gone"
    );
}

#[test]
fn a_required_field_without_value_is_reported_at_its_key() {
    let e = errors(&spec("  image:\n"));
    assert_eq!(
        e,
        ["m.yaml:6:3: image has no value; a Container spec needs it"]
    );
}

#[test]
fn yaml_bomb_is_refused_quickly() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let started = std::time::Instant::now();
    let e = errors(&text);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("invalid YAML"), "{e:?}");
}

#[test]
fn update_timeout_is_taken_with_start_first_only() {
    let c = container(&spec(
        "  image: busybox\n  update: {strategy: StartFirst, timeout: 5m}\n",
    ));
    let update = c.spec.update.unwrap();
    assert_eq!(update.timeout, Some(std::time::Duration::from_secs(300)));
    let e = errors(&spec("  image: busybox\n  update: {timeout: 5m}\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("update.timeout applies to strategy: StartFirst only"),
        "{e:?}"
    );
}

#[test]
fn a_healthcheck_interval_under_100ms_or_an_http_path_with_spaces_is_refused() {
    let e = errors(&spec(
        "  image: busybox\n  healthcheck: {tcp: {port: 80}, interval: 10ms}\n",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("healthcheck.interval must be at least 100ms")),
        "{e:?}"
    );
    let e = errors(&spec(
        "  image: busybox\n  healthcheck: {http: {port: 80, path: \"/a b\\r\\nX: y\"}}\n",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("must not hold spaces or control characters")),
        "{e:?}"
    );
}
