//! The command line, as a user runs it: `wharf validate` output and exit codes.

mod common;

use common::agent::wharf_full as wharf;

#[test]
fn validate_prints_every_error_as_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: Bad_Name\nspec:\n  imgae: busybox\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: good\nspec:\n  image: busybox\n",
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let (code, out, _) = wharf(&["validate", &path]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let bad = format!("{path}/bad.yaml");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{bad}:4:9: "))),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{bad}:6:3: ")) && l.contains("imgae")),
        "{out}"
    );
    assert!(!out.contains("good.yaml"), "{out}");
}

#[test]
fn validate_of_valid_files_prints_nothing_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.yml");
    std::fs::write(
        &file,
        "apiVersion: wharf/v1\nkind: Volume\nmetadata:\n  name: data\nspec: {}\n---\napiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: c\nspec:\n  image: busybox\n",
    )
    .unwrap();
    let (code, out, err) = wharf(&["validate", &file.display().to_string()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
}

#[test]
fn the_sample_manifests_are_valid() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");
    let (code, out, _) = wharf(&["validate", root]);
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn a_usage_error_exits_2() {
    let (code, _, err) = wharf(&["validate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_client_command_without_a_reachable_agent_exits_3() {
    let (code, _, err) = wharf(&["ps", "--host", "http://127.0.0.1:1"]);
    assert_eq!(code, 3, "{err}");
}

#[test]
fn an_agent_whose_endpoint_cannot_listen_fails_at_once_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let arg = |sub: &str| dir.path().join(sub).display().to_string();
    let (code, _, err) = wharf(&[
        "agent",
        "--manifests",
        &arg("m"),
        "--state",
        &arg("s"),
        "--run-dir",
        &arg("r"),
        "--listen",
        &addr,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "{err}");
}

/// A NUL byte used to end the file silently: what followed (here an unknown field) went
/// unseen and `wharf validate` exited 0.
#[test]
fn validate_reports_a_nul_byte_with_its_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nul.yaml");
    std::fs::write(
        &file,
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: c\nspec:\n  image: busybox\n\0  bogus: 1\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let (code, out, _) = wharf(&["validate", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("{path}:7:1: character U+0000 is not allowed")),
        "{out}"
    );
}

#[test]
fn plan_of_a_fifo_or_an_oversized_file_refuses_it_at_once_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(5 << 20)).unwrap();
    let state = dir.path().join("state");
    let run = dir.path().join("run");
    for (file, why) in [(&fifo, "a FIFO"), (&big, "larger than")] {
        // Without a writer, a plain read of the FIFO would wait forever.
        let (code, out, err) = wharf(&[
            "plan",
            &file.display().to_string(),
            "--state",
            &state.display().to_string(),
            "--run-dir",
            &run.display().to_string(),
        ]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains(why), "{out}{err}");
    }
}

#[test]
fn image_prune_and_rm_remove_nothing_beside_a_container_record_of_a_newer_wharf() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("containers/future/record.json");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(
        &record,
        r#"{"version": 99, "meta": {"imageDigest": "sha256:00"}}"#,
    )
    .unwrap();
    let state = dir.path().display().to_string();
    for args in [
        &["image", "prune", "--state", &state][..],
        &["image", "rm", "--state", &state, "busybox"][..],
    ] {
        let (code, out, err) = wharf(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains("no image is removed"), "{args:?}: {err}");
        assert!(err.contains("newer wharf"), "{args:?}: {err}");
    }
}

#[test]
fn validate_reports_a_dependency_cycle_at_each_member() {
    let dir = tempfile::tempdir().unwrap();
    for (name, on) in [("web", "api"), ("api", "web")] {
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: busybox\n  dependsOn: [{on}]\n"),
        )
        .unwrap();
    }
    let path = dir.path().display().to_string();
    let (code, out, _) = wharf(&["validate", &path]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{path}/api.yaml:4:9: dependsOn makes a cycle: api -> web -> api"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{path}/web.yaml:4:9: dependsOn makes a cycle: web -> api -> web"
        )),
        "{out}"
    );
}
