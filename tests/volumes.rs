//! Named volumes end to end: the real agent, the layered fixture image, what a user sees
//! on the host, in the container and on `/v1/volumes`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::agent::{pid_of, registry, Agent};

fn layers_image() -> String {
    format!("{}/test/layers:latest", registry())
}

fn app_yaml(run: u32) -> String {
    format!(
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: app\nspec:\n  image: {}\n  command: [\"sh\", \"-c\", \"echo run{run} >> /srv/runs; exec sleep 1000\"]\n  stopGracePeriod: 1s\n  mounts: [\"srv:/srv\", \"opq:/opt/opq\", {{type: volume, source: ro, target: /ro, readOnly: true}}]\n",
        layers_image()
    )
}

fn volume(agent: &Agent, name: &str) -> Option<serde_json::Value> {
    let (_, body) = agent.get("/v1/volumes")?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    list.into_iter().find(|v| v["name"] == name)
}

fn wait_volume(
    agent: &Agent,
    name: &str,
    what: &str,
    pred: impl Fn(Option<&serde_json::Value>) -> bool,
) -> Option<serde_json::Value> {
    common::wait_for(30, what, || {
        let v = volume(agent, name);
        pred(v.as_ref()).then_some(v)
    })
}

#[test]
fn a_volume_is_filled_from_the_image_survives_replacement_and_goes_by_its_policy() {
    if !(common::privileged("volumes") && common::agent::registry_up("volumes")) {
        return;
    }
    let mut agent = Agent::new();
    agent.pre_pull(&common::agent::busybox());
    agent.pre_pull(&layers_image());
    agent.start();
    agent.write(
        "srv.yaml",
        "apiVersion: wharf/v1\nkind: Volume\nmetadata: {name: srv}\nspec: {reclaimPolicy: Delete}\n",
    );
    agent.write("app.yaml", &app_yaml(1));
    let c = agent.wait_container("app", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);

    // Filled from the image the first time: ownership, modes, set-id bits, xattrs and
    // hard links as the image has them.
    let srv = agent.state.join("volumes/srv/data");
    let owned = srv.join("owned").metadata().unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    let private = srv.join("private").metadata().unwrap();
    assert_eq!((private.uid(), private.mode() & 0o7777), (1234, 0o750));
    assert_eq!(
        srv.join("setuid").metadata().unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        srv.join("sticky").metadata().unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        xattr::get(srv.join("xattr"), "user.wharf.fixture").unwrap(),
        Some(b"layers".to_vec())
    );
    assert_eq!(
        srv.join("data/file").metadata().unwrap().ino(),
        srv.join("data/hardlink").metadata().unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(srv.join("dirlink")).unwrap(),
        Path::new("data/sub")
    );
    // The merged view: /opt/opq is an opaque directory in the top layer.
    let opq = agent.state.join("volumes/opq/data");
    let mut names: Vec<String> = std::fs::read_dir(&opq)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new", "sub"]);
    assert_eq!(
        std::fs::read_to_string(opq.join("sub/kept-name")).unwrap(),
        "new3\n"
    );
    // The container writes into the volume, not its own layer.
    common::wait_for(30, "first run recorded", || {
        (std::fs::read_to_string(srv.join("runs")).ok()? == "run1\n").then_some(())
    });
    // A read-only volume is mounted read-only.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let ro = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/ro"))
        .unwrap_or_else(|| panic!("/ro not mounted:\n{mountinfo}"));
    assert!(ro.split(' ').nth(5).unwrap().starts_with("ro"), "{ro}");

    // The listing follows the reconcile passes: wait for the one after the start.
    let v = wait_volume(&agent, "srv", "srv listed populated with its user", |v| {
        v.is_some_and(|v| v["usedBy"] == serde_json::json!(["app"]) && v["populated"] == true)
    })
    .unwrap();
    assert_eq!(v["reclaimPolicy"], "Delete");
    assert_eq!(v["declared"], true);
    assert_eq!(v["source"], "srv.yaml");
    assert_eq!(v["path"], srv.display().to_string());
    let v = wait_volume(&agent, "opq", "opq listed with a size", |v| {
        v.is_some_and(|v| v["size"].as_u64() > Some(0))
    })
    .unwrap();
    assert_eq!(v["reclaimPolicy"], "Retain");
    assert_eq!(v["declared"], false, "created implicitly by the mount");
    let (code, out) = common::agent::wharf(&["volumes", "--host", &agent.addr]);
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("srv "))
        .unwrap_or_else(|| panic!("{out}"));
    for cell in ["Delete", "ready", "app", &srv.display().to_string()] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("opq ") && l.contains("(undeclared)")),
        "{out}"
    );

    // Usage comes from the container's cgroup.
    let c = agent.wait_container("app", 10, "usage", |c| {
        c["usage"]["pids"].as_u64() >= Some(1)
    });
    assert!(c["usage"]["memoryBytes"].as_u64() > Some(0), "{c}");
    assert!(c["usage"]["cpuSeconds"].as_f64().is_some(), "{c}");
    assert_eq!(c["volumes"], serde_json::json!(["opq", "ro", "srv"]));

    // Replaced: the data is still there, the image's content is not copied again.
    std::fs::remove_file(srv.join("owned")).unwrap();
    agent.write("app.yaml", &app_yaml(2));
    let c = agent.wait_container("app", 60, "replaced", |c| {
        c["state"] == "running" && c["pid"].as_i64() != Some(pid as i64)
    });
    let pid = pid_of(&c);
    common::wait_for(30, "second run recorded", || {
        (std::fs::read_to_string(srv.join("runs")).ok()? == "run1\nrun2\n").then_some(())
    });
    assert!(!srv.join("owned").exists(), "not refilled from the image");

    // A killed and restarted agent adopts the container; the volume is as it was.
    agent.kill();
    agent.start();
    let c = agent.wait_container("app", 30, "adopted", |c| c["state"] == "running");
    assert_eq!(pid_of(&c), pid);
    wait_volume(&agent, "srv", "srv listed again", |v| {
        v.is_some_and(|v| v["usedBy"] == serde_json::json!(["app"]) && v["declared"] == true)
    });
    assert_eq!(
        std::fs::read_to_string(srv.join("runs")).unwrap(),
        "run1\nrun2\n"
    );

    // The Delete manifest goes while the container still mounts it: nothing is deleted.
    std::fs::remove_file(agent.manifests.join("srv.yaml")).unwrap();
    wait_volume(&agent, "srv", "srv waiting for its user", |v| {
        v.is_some_and(|v| v["state"] == "deleting")
    });
    assert!(srv.join("runs").exists());
    assert_eq!(pid_of(&agent.container("app").unwrap()), pid);

    // The container goes: srv is deleted, the implicit opq is retained.
    std::fs::remove_file(agent.manifests.join("app.yaml")).unwrap();
    wait_volume(&agent, "srv", "srv deleted", |v| v.is_none());
    assert!(!agent.state.join("volumes/srv").exists());
    assert!(opq.join("new").exists());
    assert!(volume(&agent, "opq").is_some());
}

#[test]
fn a_declared_volume_that_cannot_be_made_is_listed_pending_with_why_and_made_once_it_can() {
    if !common::privileged("volumes") {
        return;
    }
    let mut agent = Agent::new();
    // A file where the volume's folder goes: its creation fails (not a directory).
    let blocker = agent.state.join("volumes/blocked");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "in the way").unwrap();
    agent.start();
    agent.write(
        "blocked.yaml",
        "apiVersion: wharf/v1\nkind: Volume\nmetadata: {name: blocked}\nspec: {reclaimPolicy: Retain}\n",
    );
    let v = wait_volume(&agent, "blocked", "listed pending with why", |v| {
        v.is_some_and(|v| v["state"] == "pending" && v["message"].is_string())
    })
    .unwrap();
    assert_eq!(v["declared"], true, "{v}");
    assert_eq!(v["source"], "blocked.yaml", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("next try at"), "{v}");
    assert!(message.contains("blocked"), "{v}");
    // Out of the way: the next try makes it.
    std::fs::remove_file(&blocker).unwrap();
    // (The volume task may list the new folder a moment before the step that made it
    // has recorded the volume as declared and cleared its failure: wait for both.)
    let v = wait_volume(&agent, "blocked", "made once it can be", |v| {
        v.is_some_and(|v| {
            v["state"] == "ready" && v["declared"] == true && v.get("message").is_none()
        })
    })
    .unwrap();
    assert_eq!(v["source"], "blocked.yaml", "{v}");
    assert!(agent.state.join("volumes/blocked/data").is_dir());
}
