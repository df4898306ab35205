//! End to end: the real agent binary, the real local registry, a temp manifests folder.
//! Checks what a user would see from the host and from the status endpoint.

mod common;

use common::agent::{alive, container_yaml, pid_of, Agent};

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

#[test]
fn a_yaml_file_becomes_a_container_an_edit_replaces_it_and_removal_removes_it() {
    if !ready("yaml_lifecycle") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "web.yaml",
        &container_yaml("web", "echo started; exec sleep 1000", ""),
    );
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);
    assert_eq!(c["source"], "web.yaml");
    assert!(c["imageDigest"].as_str().unwrap().starts_with("sha256:"));
    assert!(c["startedAt"].as_str().unwrap().ends_with('Z'));

    // From the host: its own namespaces, the image's rootfs, the command of the manifest.
    let me = std::process::id() as i32;
    for kind in ["mnt", "pid", "uts", "ipc", "net"] {
        assert_ne!(
            common::ns(pid, kind),
            common::ns(me, kind),
            "{kind} namespace"
        );
    }
    assert!(std::path::Path::new(&format!("/proc/{pid}/root/bin/busybox")).exists());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");
    let logs = common::wait_for(30, "log line", || {
        agent
            .get("/v1/containers/web/logs")
            .filter(|(_, b)| b.contains("started"))
    });
    assert_eq!(logs.0, 200);

    // The client commands read the same endpoint.
    let host = agent.addr.clone();
    let (code, out) = common::agent::wharf(&["ps", "--host", &host]);
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("running") && row.contains(&pid.to_string()),
        "{out}"
    );
    let (code, out) = common::agent::wharf(&["inspect", "web", "--host", &host]);
    assert_eq!(code, 0, "{out}");
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inspected["pid"].as_i64(), Some(pid as i64));
    let (code, out) = common::agent::wharf(&["logs", "web", "--tail", "1", "--host", &host]);
    assert_eq!((code, out.as_str()), (0, "started\n"));
    let (code, _) = common::agent::wharf(&["inspect", "nope", "--host", &host]);
    assert_eq!(code, 1, "an unknown container is a reported failure");

    // An edit replaces it: a new process, the old one gone.
    agent.write(
        "web.yaml",
        &container_yaml("web", "echo second; exec sleep 1001", ""),
    );
    let c2 = agent.wait_container("web", 30, "replaced", |c| {
        c["state"] == "running" && c["pid"].as_i64() != Some(pid as i64)
    });
    assert_ne!(c2["specHash"], c["specHash"]);
    common::wait_for(30, "old process gone", || (!alive(pid)).then_some(()));
    let pid2 = pid_of(&c2);

    // An invalid edit keeps it running and reports the line.
    agent.write(
        "web.yaml",
        &container_yaml("web", "exec sleep 1002", "  imagePullPolicyy: Always\n"),
    );
    let manifests = common::wait_for(30, "error reported", || {
        let (_, body) = agent.get("/v1/manifests")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let file = v
            .as_array()?
            .iter()
            .find(|f| f["file"] == "web.yaml")?
            .clone();
        (!file["errors"].as_array()?.is_empty()).then_some(file)
    });
    assert_eq!(manifests["errors"][0]["line"], 9, "{manifests}");
    assert_eq!(manifests["errors"][0]["column"], 3, "{manifests}");
    assert!(manifests["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("imagePullPolicyy"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let c3 = agent.container("web").unwrap();
    assert_eq!(
        c3["pid"].as_i64(),
        Some(pid2 as i64),
        "invalid edit must not touch it"
    );
    assert!(alive(pid2));

    // Removing the file removes the container, its process and its state.
    std::fs::remove_file(agent.manifests.join("web.yaml")).unwrap();
    common::wait_for(30, "container removed", || {
        agent.container("web").is_none().then_some(())
    });
    assert!(!alive(pid2));
    assert!(!agent.state.join("containers/web").exists());
}

#[test]
fn a_killed_agent_restarted_adopts_running_containers_and_keeps_exit_codes_and_logs() {
    if !ready("agent_restart") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "svc.yaml",
        &container_yaml("svc", "echo up; exec sleep 1000", ""),
    );
    agent.write(
        "job.yaml",
        &container_yaml("job", "echo job output; exit 7", "  restartPolicy: Never\n"),
    );
    agent.write("gone.yaml", &container_yaml("gone", "exec sleep 1000", ""));
    let pid = pid_of(&agent.wait_container("svc", 60, "running", |c| c["state"] == "running"));
    let gone = pid_of(&agent.wait_container("gone", 60, "running", |c| c["state"] == "running"));
    agent.wait_container("job", 60, "exited", |c| c["state"] == "exited");

    agent.kill();
    assert!(
        alive(pid),
        "a killed agent must not take its containers along"
    );
    // While the agent is down, a manifest is removed: the restarted agent must notice.
    std::fs::remove_file(agent.manifests.join("gone.yaml")).unwrap();
    agent.start();

    let c = agent.wait_container("svc", 30, "adopted", |c| c["state"] == "running");
    assert_eq!(pid_of(&c), pid, "the same process, not a restart");
    assert_eq!(c["restartCount"], 0);
    let job = agent.wait_container("job", 30, "exited", |c| c["state"] == "exited");
    assert_eq!(job["exitCode"], 7);
    assert_eq!(
        job["restartCount"], 0,
        "restartPolicy Never: never started again"
    );
    assert!(job["finishedAt"].is_string());
    let (_, log) = agent.get("/v1/containers/job/logs").unwrap();
    assert_eq!(log, "job output\n");
    common::wait_for(30, "orphan removed", || {
        agent.container("gone").is_none().then_some(())
    });
    assert!(!alive(gone));

    // `wharf plan` previews, offline and with the same planner, what a change would do.
    let state = agent.state.display().to_string();
    let run = agent.run.display().to_string();
    let folder = agent.manifests.display().to_string();
    let (code, out) =
        common::agent::wharf(&["plan", &folder, "--state", &state, "--run-dir", &run]);
    assert_eq!(
        (code, out.as_str()),
        (0, "nothing to do\nunchanged: job, svc\n")
    );
    let other = agent.tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("svc.yaml"),
        container_yaml("svc", "echo changed; exec sleep 1000", ""),
    )
    .unwrap();
    std::fs::write(other.join("new.yaml"), container_yaml("new", "true", "")).unwrap();
    let other = other.display().to_string();
    let (code, out) = common::agent::wharf(&["plan", &other, "--state", &state, "--run-dir", &run]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "remove   job\ncreate   new\nreplace  svc (spec.command changed)\n"
        )
    );

    // SIGTERM stops the agent cleanly and leaves containers running.
    let status = agent.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(alive(pid));
}

#[test]
fn bad_inputs_are_reported_per_container_and_do_not_block_others() {
    if !ready("bad_inputs") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let reg = common::agent::registry();
    agent.write("good.yaml", &container_yaml("good", "exec sleep 1000", ""));
    agent.write(
        "noimage.yaml",
        &format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: noimage\nspec:\n  image: {reg}/test/does-not-exist:1\n"),
    );
    agent.write(
        "down.yaml",
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: down\nspec:\n  image: 127.0.0.1:1/test/busybox:latest\n",
    );
    agent.write(
        "nocmd.yaml",
        &format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: nocmd\nspec:\n  image: {reg}/test/busybox:latest\n  command: [no-such-command]\n"),
    );
    agent.write(
        "ports.yaml",
        &container_yaml(
            "ports",
            "exec sleep 1000",
            "  mounts: [\"/nonexistent/wharf-test:/data\"]\n",
        ),
    );

    agent.wait_container("good", 60, "running", |c| c["state"] == "running");
    let c = agent.wait_container("noimage", 30, "pending with a reason", |c| {
        c["state"] == "pending" && c["message"].as_str().is_some_and(|m| m != "creating")
    });
    assert!(
        c["message"].as_str().unwrap().contains("does-not-exist"),
        "{c}"
    );
    let c = agent.wait_container("down", 30, "pending with a reason", |c| {
        c["state"] == "pending" && c["message"].as_str().is_some_and(|m| m != "creating")
    });
    assert!(
        c["message"].as_str().unwrap().contains("127.0.0.1:1"),
        "{c}"
    );
    let c = agent.wait_container("nocmd", 30, "failed", |c| c["state"] == "failed");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("executable file not found"),
        "{c}"
    );
    // A missing bind source may appear later (kubelet's CreateContainerConfigError):
    // the container waits with the reason and is retried.
    let c = agent.wait_container("ports", 30, "waiting for its bind source", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("bind mount source /nonexistent/wharf-test does not exist"))
    });
    assert_ne!(c["state"], "running", "{c}");
}

#[test]
fn a_crashing_container_is_restarted_with_a_growing_restart_count() {
    if !ready("crash_restart") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "crash.yaml",
        &container_yaml("crash", "echo boom; exit 1", ""),
    );
    let c = agent.wait_container("crash", 60, "restarted twice", |c| {
        c["restartCount"].as_u64().unwrap_or(0) >= 2
    });
    assert_ne!(c["state"], "failed", "{c}");
    let (_, log) = agent.get("/v1/containers/crash/logs").unwrap();
    assert!(log.matches("boom").count() >= 2, "{log}");
}

#[test]
fn images_in_use_are_listed_and_unused_ones_are_collected_after_the_grace_period() {
    if !ready("image_gc") {
        return;
    }
    let mut agent = Agent::new();
    agent.extra = vec!["--image-gc-grace".into(), "1s".into()];
    agent.start();
    agent.write("web.yaml", &container_yaml("web", "exec sleep 1000", ""));
    let pid = pid_of(&agent.wait_container("web", 60, "running", |c| c["state"] == "running"));

    // An image nobody uses, imported beside the running agent.
    let rootfs = agent.tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/unused"), "x").unwrap();
    let state = agent.state.display().to_string();
    let (code, out) = common::agent::wharf(&[
        "image",
        "import",
        "--rootfs",
        &rootfs.display().to_string(),
        "test/unused:1",
        "--state",
        &state,
    ]);
    assert_eq!(code, 0, "{out}");
    let listed = |what: &str| {
        let (code, out) = common::agent::wharf(&["images", "--json", "--state", &state]);
        assert_eq!(code, 0);
        out.contains(what)
    };
    assert!(listed("test/unused:1"));

    // The agent's garbage collection removes it after the grace period; the image the
    // running container uses stays, listed with its user.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while listed("test/unused:1") {
        assert!(
            std::time::Instant::now() < deadline,
            "unused image not collected; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let images = common::wait_for(30, "images listed", || {
        let (_, body) = agent.get("/v1/images")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (!v.as_array()?.is_empty()).then_some(v)
    });
    let busybox = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["references"][0] == common::agent::busybox())
        .unwrap_or_else(|| panic!("{images}"));
    assert_eq!(busybox["usedBy"], serde_json::json!(["web"]));
    assert!(busybox["size"].as_u64().unwrap() > 100_000, "{busybox}");
    assert!(busybox["layers"].as_u64().unwrap() >= 1);
    assert!(busybox["lastUsed"].is_string());
    assert!(alive(pid));
    let (code, out) =
        common::agent::wharf(&["image", "rm", &common::agent::busybox(), "--state", &state]);
    assert_eq!(
        code, 1,
        "an image a container uses must not be removed: {out}"
    );
}
