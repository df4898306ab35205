//! Scenario tests of StartFirst updates with the recording fakes: which instance runs,
//! when the traffic moves, and what the status says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::status::ContainerState;
use super::tests::{container, converge, desired, seams, state_of, Fakes};
use super::{Reconciler, Seams};
use crate::health::Health;
use crate::net::testing::FakeNetwork;
use crate::runtime::testing::FakeRuntime;
use crate::runtime::{ObservedState, Runtime};

const CHECK: &str = "  healthcheck: {exec: [true], interval: 1s}\n";

fn web(image: &str, update: &str) -> String {
    container(
        "web",
        image,
        &format!("{CHECK}  ports: [{{hostPort: 8080, containerPort: 80}}]\n  update: {{strategy: StartFirst{update}}}\n"),
    )
}

fn world() -> (Arc<FakeRuntime>, Arc<FakeNetwork>, Fakes) {
    let rt = Arc::new(FakeRuntime::default());
    let net = Arc::new(FakeNetwork::default());
    let r = Reconciler::new(Seams {
        network: net.clone(),
        ..seams(&rt)
    });
    (rt, net, r)
}

async fn pid_of(rt: &FakeRuntime, instance: &str) -> i32 {
    let list = rt.list().await.unwrap();
    match list.iter().find(|o| o.name == instance).map(|o| &o.state) {
        Some(ObservedState::Running(r)) => r.pid,
        other => panic!("{instance} is not running: {other:?}"),
    }
}

/// Tells the reconciler what the health monitor would: `instance` has `health`.
async fn set_health(r: &mut Fakes, rt: &FakeRuntime, instance: &str, health: Health) {
    let pid = pid_of(rt, instance).await;
    r.set_health(BTreeMap::from([(instance.to_owned(), (pid, health))]));
}

fn since(calls: Vec<String>, n: usize) -> Vec<String> {
    calls.into_iter().skip(n).collect()
}

#[tokio::test]
async fn a_start_first_update_starts_the_new_version_beside_the_old_and_moves_the_traffic_once_healthy(
) {
    let (rt, net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    assert_eq!(rt.calls(), ["start web sh"]);

    let v2 = desired(&[("web.yaml", &web("app:2", ""))]);
    let s = converge(&mut r, &v2).await;
    assert_eq!(
        since(rt.calls(), 1),
        ["start web.alt sh"],
        "the old one runs on"
    );
    let w = s.container("web").unwrap();
    assert_eq!((w.state, w.generation), (ContainerState::Running, Some(1)));
    assert_eq!(w.pid, Some(pid_of(&rt, "web").await), "the old one serves");
    assert!(
        w.message
            .as_deref()
            .unwrap()
            .contains("waiting for the new version (generation 2) to be healthy"),
        "{w:?}"
    );
    assert!(
        rt.last_request("web.alt").unwrap().meta.image == "app:2",
        "the new version runs the new spec"
    );
    // Probed as it starts, never restarted by its own health: it is rolled back.
    let target = &s.standby_health_targets;
    assert_eq!(target.len(), 1);
    assert_eq!(target[0].name, "web.alt");
    assert!(!target[0].restart_when_unhealthy);
    assert!(
        net.calls().iter().any(|c| c == "attach web.alt"),
        "{:?}",
        net.calls()
    );

    // Still starting: nothing moves.
    set_health(&mut r, &rt, "web.alt", Health::Starting).await;
    converge(&mut r, &v2).await;
    assert_eq!(since(rt.calls(), 1), ["start web.alt sh"]);

    set_health(&mut r, &rt, "web.alt", Health::Healthy).await;
    let new_pid = pid_of(&rt, "web.alt").await;
    let s = converge(&mut r, &v2).await;
    assert_eq!(
        since(rt.calls(), 1),
        [
            "start web.alt sh",
            "promote web.alt",
            "stop web SIGTERM",
            "remove web"
        ],
        "promoted before the old one stops"
    );
    let handover = net.calls().iter().position(|c| c == "handover web web.alt");
    let detach = net.calls().iter().position(|c| c == "detach web");
    assert!(
        handover.is_some() && handover < detach,
        "the traffic moves before the old one goes: {:?}",
        net.calls()
    );
    let w = s.container("web").unwrap();
    assert_eq!(
        (w.state, w.generation, w.pid),
        (ContainerState::Running, Some(2), Some(new_pid))
    );
    assert_eq!(w.message, None);

    // The next update goes back to the first slot.
    let v3 = desired(&[("web.yaml", &web("app:3", ""))]);
    converge(&mut r, &v3).await;
    assert_eq!(rt.calls().last().unwrap(), "start web sh");
}

#[tokio::test]
async fn a_new_version_that_never_becomes_healthy_is_rolled_back_and_not_retried() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    let old_pid = pid_of(&rt, "web").await;
    let bad = desired(&[("web.yaml", &web("app:2", ", timeout: 200ms"))]);
    converge(&mut r, &bad).await;
    set_health(&mut r, &rt, "web.alt", Health::Unhealthy).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let s = converge(&mut r, &bad).await;
    assert_eq!(
        since(rt.calls(), 1),
        ["start web.alt sh", "stop web.alt SIGTERM", "remove web.alt"]
    );
    let w = s.container("web").unwrap();
    assert_eq!(
        (w.state, w.pid, w.generation),
        (ContainerState::Running, Some(old_pid), Some(1))
    );
    let message = w.message.clone().unwrap();
    assert!(
        message.contains(
            "rolled back: generation 2 was not healthy within update.timeout 200ms (it was unhealthy)"
        ) && message.contains("generation 1 keeps serving"),
        "{message}"
    );

    // Not retried in a loop; the old one is still restarted by its policy, as it was.
    tokio::time::sleep(Duration::from_millis(100)).await;
    converge(&mut r, &bad).await;
    rt.exit("web", 1);
    let s = converge(&mut r, &bad).await;
    assert_eq!(rt.calls().len(), 5, "{:?}", rt.calls());
    assert_eq!(
        rt.calls()[4],
        "start web sh",
        "a restart of the old version"
    );
    assert_eq!(rt.last_request("web").unwrap().meta.image, "app:1");
    assert!(state_of(&s, "web").1.unwrap().contains("rolled back"));

    // A changed manifest is tried again.
    converge(&mut r, &desired(&[("web.yaml", &web("app:3", ""))])).await;
    assert_eq!(rt.calls().last().unwrap(), "start web.alt sh");
}

#[tokio::test]
async fn a_new_version_that_exits_is_rolled_back_at_once_with_its_exit_code() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    let v2 = desired(&[("web.yaml", &web("app:2", ""))]);
    converge(&mut r, &v2).await;
    rt.exit("web.alt", 3);
    let s = converge(&mut r, &v2).await;
    assert_eq!(rt.calls().last().unwrap(), "remove web.alt");
    assert!(
        state_of(&s, "web")
            .1
            .unwrap()
            .contains("rolled back: generation 2 exited with code 3 before it was ready"),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_manifest_changed_during_an_update_replaces_the_new_version_without_a_rollback_message() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    converge(&mut r, &desired(&[("web.yaml", &web("app:2", ""))])).await;
    let v3 = desired(&[("web.yaml", &web("app:3", ""))]);
    let s = converge(&mut r, &v3).await;
    assert_eq!(
        since(rt.calls(), 1),
        [
            "start web.alt sh",
            "stop web.alt SIGTERM",
            "remove web.alt",
            "start web.alt sh"
        ]
    );
    assert_eq!(rt.last_request("web.alt").unwrap().meta.image, "app:3");
    assert!(
        !state_of(&s, "web")
            .1
            .unwrap_or_default()
            .contains("rolled back:"),
        "{s:?}"
    );
}

#[tokio::test]
async fn an_agent_restarted_after_the_promotion_finishes_the_update() {
    let (rt, net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    let v2 = desired(&[("web.yaml", &web("app:2", ""))]);
    converge(&mut r, &v2).await;
    // Killed right after marking the new version promoted.
    rt.promote("web.alt").await.unwrap();
    drop(r);
    let mut r: Fakes = Reconciler::new(Seams {
        network: net.clone(),
        ..seams(&rt)
    });
    let new_pid = pid_of(&rt, "web.alt").await;
    let s = converge(&mut r, &v2).await;
    let w = s.container("web").unwrap();
    assert_eq!((w.pid, w.generation), (Some(new_pid), Some(2)));
    assert_eq!(rt.calls().last().unwrap(), "remove web", "{:?}", rt.calls());
    assert!(net.calls().iter().any(|c| c == "handover web web.alt"));
}

#[tokio::test]
async fn removing_the_manifest_during_an_update_removes_both_versions() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    converge(&mut r, &desired(&[("web.yaml", &web("app:2", ""))])).await;
    let s = converge(&mut r, &desired(&[])).await;
    assert!(s.containers.is_empty(), "{s:?}");
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_new_version_that_cannot_run_is_given_up_and_the_old_one_restarted_as_it_was() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    let v2 = web("app:2", "").replace("  image:", "  user: missing-user\n  image:");
    let bad = desired(&[("web.yaml", &v2)]);
    let s = converge(&mut r, &bad).await;
    let (state, message) = state_of(&s, "web");
    assert_eq!(state, ContainerState::Running);
    let message = message.unwrap();
    assert!(
        message.starts_with("the update is not applied, the running version keeps running")
            && message.contains("unable to find user missing-user"),
        "{message}"
    );
    // Not retried; the old version is still restarted by its policy.
    tokio::time::sleep(Duration::from_millis(150)).await;
    converge(&mut r, &bad).await;
    rt.exit("web", 1);
    converge(&mut r, &bad).await;
    let starts: Vec<String> = rt
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("start"))
        .collect();
    assert_eq!(starts, ["start web sh", "start web.alt sh", "start web sh"]);
    assert_eq!(rt.last_request("web").unwrap().meta.image, "app:1");
}

#[tokio::test]
async fn a_longer_timeout_after_a_rollback_tries_the_update_again() {
    let (rt, _net, mut r) = world();
    converge(&mut r, &desired(&[("web.yaml", &web("app:1", ""))])).await;
    let short = desired(&[("web.yaml", &web("app:2", ", timeout: 100ms"))]);
    converge(&mut r, &short).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let s = converge(&mut r, &short).await;
    assert!(state_of(&s, "web").1.unwrap().starts_with("rolled back:"));
    let n = rt.calls().len();
    // (`update` is not in the spec hash: the same spec, another rollout.)
    converge(
        &mut r,
        &desired(&[("web.yaml", &web("app:2", ", timeout: 10m"))]),
    )
    .await;
    assert_eq!(since(rt.calls(), n), ["start web.alt sh"]);
}
