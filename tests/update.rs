//! Updates with the real agent: the new image is pulled before anything is stopped, so
//! a registry that is down never takes the running version away.

mod common;

use common::agent::{container_yaml, pid_of, Agent};

#[test]
fn a_recreate_update_while_the_registry_is_down_keeps_the_old_version_running() {
    if !(common::privileged("update_registry_down") && common::agent::registry_up("update")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write("web.yaml", &container_yaml("web", "exec sleep 1000", ""));
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);
    // The new version's registry does not answer (nothing listens on port 1).
    let v2 = container_yaml("web", "exec sleep 1000", "")
        .replace(&common::agent::busybox(), "127.0.0.1:1/test/busybox:v2");
    agent.write("web.yaml", &v2);
    let c = agent.wait_container("web", 30, "says why", |c| {
        c["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the update is not applied"))
    });
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(pid_of(&c), pid, "the old version was stopped: {c}");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("next try at"), "{message}");
    assert!(common::agent::alive(pid));
    // Its registry back (here: the image moved to one that answers), it is replaced.
    agent.write("web.yaml", &container_yaml("web", "exec sleep 1001", ""));
    let c = agent.wait_container("web", 30, "replaced", |c| {
        c["state"] == "running" && c["generation"] == 2
    });
    assert_ne!(pid_of(&c), pid);
}
