//! Scenario tests of the reconciler with small recording fakes of the runtime and the
//! image store (style.md item 1): what a user would see in the status, and which
//! runtime calls were made.

use std::collections::HashMap;
use std::sync::Arc;

use super::status::{ContainerState, StatusSnapshot};
use super::{ImageInfo, Images, Reconciler, Seams};
use crate::images::ImageError;
use crate::manifest::{DesiredState, Loader, PullPolicy, SourceFile};
use crate::net::testing::FakeNetwork;
use crate::net::Network;
use crate::runtime::testing::FakeRuntime;
use crate::runtime::{ImageConfig, Runtime};
use crate::volumes::{FakeVolumes, Volumes};

#[derive(Default)]
pub(super) struct FakeImages {
    pub broken: HashMap<String, String>,
    /// When set, every pull waits for a permit: a create held in flight.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Images for FakeImages {
    async fn ensure(&self, reference: &str, _policy: PullPolicy) -> Result<ImageInfo, ImageError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some(e) = self.broken.get(reference) {
            return Err(ImageError::RegistryAccess {
                reference: reference.into(),
                registry: "registry.test".into(),
                reason: e.clone(),
                hint: "retried".into(),
            });
        }
        Ok(ImageInfo {
            digest: "sha256:abc".into(),
            defaults: ImageConfig {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            layers: vec![],
        })
    }
}

pub(super) type Fakes = Reconciler<FakeRuntime, FakeImages, FakeNetwork, FakeVolumes>;

/// Fakes of every seam.
pub(super) fn seams(
    rt: &Arc<FakeRuntime>,
) -> Seams<FakeRuntime, FakeImages, FakeNetwork, FakeVolumes> {
    Seams {
        runtime: rt.clone(),
        images: Arc::new(FakeImages::default()),
        network: Arc::new(FakeNetwork::default()),
        volumes: Arc::new(FakeVolumes::default()),
    }
}

/// A reconciler over fakes of every seam, and its runtime.
pub(super) fn fakes() -> (Arc<FakeRuntime>, Fakes) {
    let rt = Arc::new(FakeRuntime::default());
    let r = Reconciler::new(seams(&rt));
    (rt, r)
}

pub(super) fn desired(files: &[(&str, &str)]) -> DesiredState {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(p, t)| SourceFile {
            path: p.to_string(),
            text: Ok(t.to_string()),
        })
        .collect();
    Loader::new(None).load(&files)
}

pub(super) fn container(name: &str, image: &str, extra: &str) -> String {
    format!("apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n{extra}")
}

/// Runs passes until no step is in flight, returning the last status.
pub(super) async fn converge<R: Runtime, I: Images, N: Network, V: Volumes>(
    r: &mut Reconciler<R, I, N, V>,
    d: &DesiredState,
) -> StatusSnapshot {
    loop {
        let (status, _) = r.pass(d).await.unwrap();
        if !r.busy() {
            return status;
        }
        r.step_done().await;
    }
}

pub(super) fn state_of(s: &StatusSnapshot, name: &str) -> (ContainerState, Option<String>) {
    let c = s
        .container(name)
        .unwrap_or_else(|| panic!("{name} missing from {s:?}"));
    (c.state, c.message.clone())
}

#[tokio::test]
async fn a_declared_container_is_started_and_reported_running_with_its_source() {
    let (rt, mut r) = fakes();
    let d = desired(&[("web.yaml", &container("web", "busybox", ""))]);
    let s = converge(&mut r, &d).await;
    let web = s.container("web").unwrap();
    assert_eq!(web.state, ContainerState::Running);
    assert!(web.pid.is_some());
    assert_eq!(web.source.as_deref(), Some("web.yaml"));
    assert_eq!(web.image_digest.as_deref(), Some("sha256:abc"));
    assert_eq!(rt.calls(), ["start web sh"]);
}

#[tokio::test]
async fn a_registry_error_leaves_the_container_pending_with_the_reason_and_others_run() {
    let rt = Arc::new(FakeRuntime::default());
    let images = FakeImages {
        broken: HashMap::from([("down:1".into(), "connection refused".into())]),
        ..Default::default()
    };
    let mut r = Reconciler::new(Seams {
        images: Arc::new(images),
        ..seams(&rt)
    });
    let d = desired(&[
        ("a.yaml", &container("a", "down:1", "")),
        ("b.yaml", &container("b", "busybox", "")),
    ]);
    let s = converge(&mut r, &d).await;
    let (state, message) = state_of(&s, "a");
    assert_eq!(state, ContainerState::Pending);
    assert!(message.unwrap().contains("connection refused"));
    assert_eq!(state_of(&s, "b").0, ContainerState::Running);
}

#[tokio::test]
async fn a_missing_command_fails_the_container_with_the_reason() {
    let (_rt, mut r) = fakes();
    let d = desired(&[(
        "a.yaml",
        &container("a", "busybox", "  command: [missing-cmd]\n"),
    )]);
    let (state, message) = state_of(&converge(&mut r, &d).await, "a");
    assert_eq!(state, ContainerState::Failed);
    assert!(message.unwrap().contains("executable file not found"));
}

/// An unknown user is a start failure: `failed` with the reason, and under `Never`
/// never tried again (it was retried forever as `pending`, "replacing" a container
/// that never existed). An edit of the spec tries again at once.
#[tokio::test]
async fn an_unknown_user_under_never_fails_once_and_is_not_retried() {
    let (rt, mut r) = fakes();
    let spec = |user: &str| {
        container(
            "job",
            "busybox",
            &format!("  user: {user}\n  restartPolicy: Never\n"),
        )
    };
    let d = desired(&[("job.yaml", &spec("missing-user"))]);
    let (state, message) = state_of(&converge(&mut r, &d).await, "job");
    assert_eq!(state, ContainerState::Failed);
    assert!(message
        .unwrap()
        .contains("unable to find user missing-user"));
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let (state, _) = state_of(&converge(&mut r, &d).await, "job");
        assert_eq!(state, ContainerState::Failed);
    }
    assert_eq!(rt.calls().len(), 1, "{:?}", rt.calls());
    let d = desired(&[("job.yaml", &spec("\"0:0\""))]);
    converge(&mut r, &d).await;
    assert_eq!(rt.calls().len(), 2, "{:?}", rt.calls());
}

#[tokio::test]
async fn privileged_gets_every_capability_and_volumes_are_recorded_on_the_container() {
    let (rt, mut r) = fakes();
    let d = desired(&[
        (
            "a.yaml",
            &container(
                "a",
                "busybox",
                "  privileged: true\n  capabilities: {drop: [SYS_MODULE]}\n  mounts: [\"data:/data\", \"/srv:/srv\"]\n",
            ),
        ),
        ("b.yaml", &container("b", "busybox", "")),
    ]);
    let s = converge(&mut r, &d).await;
    let a = rt.last_request("a").unwrap();
    assert!(a.privileged);
    assert!(a.capabilities.contains(&"CAP_SYS_ADMIN".to_string()));
    assert!(
        !a.capabilities.contains(&"CAP_SYS_MODULE".to_string()),
        "dropped"
    );
    assert_eq!(a.meta.volumes, ["data"]);
    let status = s.container("a").unwrap();
    assert_eq!(status.volumes, ["data"]);
    let b = rt.last_request("b").unwrap();
    assert!(!b.privileged);
    assert!(!b.capabilities.contains(&"CAP_SYS_ADMIN".to_string()));
}

#[tokio::test]
async fn an_edit_stops_the_old_container_with_its_stop_signal_before_starting_the_new_one() {
    let (rt, mut r) = fakes();
    let d1 = desired(&[(
        "a.yaml",
        &container("a", "busybox", "  stopSignal: SIGQUIT\n"),
    )]);
    converge(&mut r, &d1).await;
    let d2 = desired(&[(
        "a.yaml",
        &container("a", "busybox", "  stopSignal: SIGQUIT\n  args: [x]\n"),
    )]);
    let s = converge(&mut r, &d2).await;
    assert_eq!(
        rt.calls(),
        ["start a sh", "stop a SIGQUIT", "remove a", "start a x"]
    );
    assert_eq!(state_of(&s, "a").0, ContainerState::Running);
}

#[tokio::test]
async fn an_update_whose_image_cannot_be_pulled_leaves_the_running_version_alone() {
    let rt = Arc::new(FakeRuntime::default());
    let images = FakeImages {
        broken: HashMap::from([("busybox:v2".into(), "connection refused".into())]),
        ..Default::default()
    };
    let mut r = Reconciler::new(Seams {
        images: Arc::new(images),
        ..seams(&rt)
    });
    converge(
        &mut r,
        &desired(&[("a.yaml", &container("a", "busybox:v1", ""))]),
    )
    .await;
    let s = converge(
        &mut r,
        &desired(&[("a.yaml", &container("a", "busybox:v2", ""))]),
    )
    .await;
    assert_eq!(rt.calls(), ["start a sh"], "nothing stopped");
    let (state, message) = state_of(&s, "a");
    assert_eq!(state, ContainerState::Running);
    let message = message.unwrap();
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains("keeps running"), "{message}");
}

#[tokio::test]
async fn a_container_whose_manifest_is_gone_is_stopped_and_removed() {
    let (rt, mut r) = fakes();
    converge(
        &mut r,
        &desired(&[("a.yaml", &container("a", "busybox", ""))]),
    )
    .await;
    let s = converge(&mut r, &desired(&[])).await;
    assert!(s.containers.is_empty(), "{s:?}");
    assert_eq!(rt.calls(), ["start a sh", "stop a SIGTERM", "remove a"]);
}

#[tokio::test]
async fn an_exited_container_with_never_policy_stays_exited_with_its_code() {
    let (rt, mut r) = fakes();
    let d = desired(&[(
        "a.yaml",
        &container("a", "busybox", "  restartPolicy: Never\n"),
    )]);
    converge(&mut r, &d).await;
    rt.exit("a", 3);
    let s = converge(&mut r, &d).await;
    let a = s.container("a").unwrap();
    assert_eq!((a.state, a.exit_code), (ContainerState::Exited, Some(3)));
    assert_eq!(rt.calls(), ["start a sh"]);
}

#[tokio::test]
async fn a_container_whose_network_is_not_declared_is_left_as_it_runs_and_says_why() {
    let (rt, mut r) = fakes();
    let net = "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec: {}\n";
    let app = container("app", "busybox", "  networks: [backend]\n");
    converge(&mut r, &desired(&[("net.yaml", net), ("app.yaml", &app)])).await;
    assert_eq!(rt.calls().len(), 1);
    // The Network manifest goes away: the container keeps running, untouched.
    let s = converge(&mut r, &desired(&[("app.yaml", &app)])).await;
    let (state, message) = state_of(&s, "app");
    assert_eq!(state, ContainerState::Running);
    assert!(message.unwrap().contains("network backend is not declared"));
    assert_eq!(rt.calls().len(), 1, "{:?}", rt.calls());
    // Never declared at all: nothing is started.
    let rt2 = Arc::new(FakeRuntime::default());
    let mut r2 = Reconciler::new(seams(&rt2));
    let s = converge(&mut r2, &desired(&[("app.yaml", &app)])).await;
    assert_eq!(state_of(&s, "app").0, ContainerState::Pending);
    assert!(rt2.calls().is_empty());
}

/// A start that fails is a start failure: under `Never` the one try, `failed`, never
/// restarted (it was seen as "lost" and restarted); under `Always` retried with backoff,
/// `pending` with the time of the next try, and no restart counted.
#[tokio::test]
async fn a_failed_start_is_never_retried_under_never_and_retried_with_backoff_otherwise() {
    let (rt, mut r) = fakes();
    let spec = |policy: &str| {
        container(
            "job",
            "busybox",
            &format!("  command: [flaky]\n  restartPolicy: {policy}\n"),
        )
    };
    let d = desired(&[("job.yaml", &spec("Never"))]);
    let (state, message) = state_of(&converge(&mut r, &d).await, "job");
    assert_eq!(state, ContainerState::Failed);
    assert!(message.unwrap().contains("restartPolicy Never"));
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    converge(&mut r, &d).await;
    assert_eq!(rt.calls().len(), 1, "{:?}", rt.calls());

    let d = desired(&[("job.yaml", &spec("Always"))]);
    let s = converge(&mut r, &d).await;
    let job = s.container("job").unwrap();
    assert_eq!(job.state, ContainerState::Pending);
    assert!(job.next_restart_at.is_some(), "{job:?}");
    assert!(
        job.message.as_deref().unwrap().contains("next try at"),
        "{job:?}"
    );
    assert_eq!(job.restart_count, 0);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    converge(&mut r, &d).await;
    assert_eq!(
        rt.calls().len(),
        3,
        "retried after 100 ms: {:?}",
        rt.calls()
    );
}

/// The first restart after a crash is immediate; the next waits, and says until when;
/// the status shows how the previous run ended.
#[tokio::test]
async fn a_crash_restarts_at_once_then_backs_off_and_shows_the_last_state() {
    let (rt, mut r) = fakes();
    let d = desired(&[("a.yaml", &container("a", "busybox", ""))]);
    converge(&mut r, &d).await;
    rt.exit("a", 3);
    let s = converge(&mut r, &d).await;
    let a = s.container("a").unwrap();
    assert_eq!((a.state, a.restart_count), (ContainerState::Running, 1));
    let last = a.last_state.as_ref().expect("lastState");
    assert_eq!((last.exit_code, last.reason.as_str()), (3, "Error"));
    rt.exit("a", 4);
    let s = converge(&mut r, &d).await;
    let a = s.container("a").unwrap();
    assert_eq!(a.state, ContainerState::Pending, "{a:?}");
    assert!(a.next_restart_at.is_some(), "{a:?}");
    assert!(a.message.as_deref().unwrap().contains("back-off"), "{a:?}");
    assert_eq!(rt.calls().len(), 2, "{:?}", rt.calls());
}

/// A Network and its containers: made before the container starts (which gets an
/// address on it), and removed together in one change: the containers go, then the
/// network, each step unblocking the next, with no periodic resync involved.
#[tokio::test]
async fn a_network_is_made_before_its_containers_and_removed_after_them_in_one_change() {
    let rt = Arc::new(FakeRuntime::default());
    let net = Arc::new(FakeNetwork::default());
    let mut r = Reconciler::new(Seams {
        network: net.clone(),
        ..seams(&rt)
    });
    let network = "apiVersion: wharf/v1\nkind: Network\nmetadata:\n  name: backend\nspec:\n  subnet: 10.77.0.0/24\n";
    let app = container("app", "busybox", "  networks: [backend]\n");
    let s = converge(
        &mut r,
        &desired(&[("net.yaml", network), ("app.yaml", &app)]),
    )
    .await;
    let c = s.container("app").unwrap();
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(c.addresses[0].network, "backend");
    assert!(
        c.addresses[0].ip.to_string().starts_with("10.77.0."),
        "{c:?}"
    );
    let calls = net.calls();
    let ensured = calls.iter().position(|c| c == "ensure backend").unwrap();
    let attached = calls.iter().position(|c| c == "attach app").unwrap();
    assert!(ensured < attached, "{calls:?}");
    let backend = s.networks.iter().find(|n| n.name == "backend").unwrap();
    assert_eq!(backend.containers[0].name, "app");

    let s = converge(&mut r, &desired(&[])).await;
    assert!(s.containers.is_empty(), "{s:?}");
    assert_eq!(
        net.made(),
        ["default"],
        "backend removed in the same change"
    );
    let calls = net.calls();
    let detached = calls.iter().position(|c| c == "detach app").unwrap();
    let removed = calls.iter().position(|c| c == "remove backend").unwrap();
    assert!(detached < removed, "{calls:?}");
}

/// A port another container publishes: the start fails (transient: pending, retried),
/// and the other container is untouched.
#[tokio::test]
async fn a_port_taken_by_another_container_leaves_the_second_pending_with_the_reason() {
    let (_rt, mut r) = fakes();
    let d = desired(&[
        (
            "a.yaml",
            &container("a", "busybox", "  ports: [\"8080:80\"]\n"),
        ),
        (
            "b.yaml",
            &container("b", "busybox", "  ports: [\"8080:80\"]\n"),
        ),
    ]);
    let s = converge(&mut r, &d).await;
    assert_eq!(state_of(&s, "a").0, ContainerState::Running);
    let (state, message) = state_of(&s, "b");
    assert_eq!(state, ContainerState::Pending);
    assert!(message.unwrap().contains("cannot publish ports"));
}

/// A declared Volume and the container mounting it: created before the container
/// starts; a `Delete` volume removed with its container in one change goes once the
/// container is gone, in the same change.
#[tokio::test]
async fn a_volume_is_made_before_its_container_and_deleted_after_it() {
    let rt = Arc::new(FakeRuntime::default());
    let vols = Arc::new(FakeVolumes::default());
    let mut r = Reconciler::new(Seams {
        volumes: vols.clone(),
        ..seams(&rt)
    });
    let volume =
        "apiVersion: wharf/v1\nkind: Volume\nmetadata:\n  name: data\nspec:\n  reclaimPolicy: Delete\n";
    let app = container("app", "busybox", "  mounts: [\"data:/data\"]\n");
    let s = converge(&mut r, &desired(&[("v.yaml", volume), ("app.yaml", &app)])).await;
    assert_eq!(state_of(&s, "app").0, ContainerState::Running);
    assert_eq!(vols.calls(), ["create data"]);
    assert_eq!(
        rt.calls(),
        ["start app sh"],
        "started after the volume was made"
    );

    // Both go in one change; the volume waits for its container.
    vols.hold("data", true);
    let s = converge(&mut r, &desired(&[])).await;
    assert!(s.containers.is_empty());
    assert_eq!(vols.names(), ["data"], "kept while a shim holds it");
    vols.hold("data", false);
    converge(&mut r, &desired(&[])).await;
    assert_eq!(vols.calls(), ["create data", "update data", "delete data"]);
    assert!(vols.names().is_empty());
}

/// A create in flight when its manifest and its `Delete` volume are removed: the volume
/// is not deleted under it (the create would make it again, implicitly), only once the
/// container is gone.
#[tokio::test]
async fn a_volume_is_not_deleted_under_a_create_in_flight() {
    let rt = Arc::new(FakeRuntime::default());
    let vols = Arc::new(FakeVolumes::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut r = Reconciler::new(Seams {
        volumes: vols.clone(),
        images: Arc::new(FakeImages {
            gate: Some(gate.clone()),
            ..Default::default()
        }),
        ..seams(&rt)
    });
    let volume =
        "apiVersion: wharf/v1\nkind: Volume\nmetadata:\n  name: data\nspec:\n  reclaimPolicy: Delete\n";
    converge(&mut r, &desired(&[("v.yaml", volume)])).await;
    let app = container("app", "busybox", "  mounts: [\"data:/data\"]\n");
    r.pass(&desired(&[("v.yaml", volume), ("app.yaml", &app)]))
        .await
        .unwrap();
    assert!(r.busy(), "the create is in flight");
    r.pass(&desired(&[])).await.unwrap();
    while let Ok(Some(_)) =
        tokio::time::timeout(std::time::Duration::from_millis(50), r.step_done()).await
    {
        r.pass(&desired(&[])).await.unwrap();
    }
    assert!(
        !vols.calls().contains(&"delete data".to_owned()),
        "deleted under the create: {:?}",
        vols.calls()
    );
    assert_eq!(vols.names(), ["data"]);
    gate.add_permits(1);
    let s = converge(&mut r, &desired(&[])).await;
    assert!(s.containers.is_empty());
    assert_eq!(
        rt.calls(),
        ["start app sh", "stop app SIGTERM", "remove app"]
    );
    assert!(
        vols.names().is_empty(),
        "deleted once the container is gone"
    );
}

/// A volume step that fails is retried with backoff, and says why and when beside the
/// volume; the container mounting it waits meanwhile.
#[tokio::test]
async fn a_failed_volume_step_says_why_and_is_retried() {
    let rt = Arc::new(FakeRuntime::default());
    let vols = Arc::new(FakeVolumes::default());
    let mut r = Reconciler::new(Seams {
        volumes: vols.clone(),
        ..seams(&rt)
    });
    vols.fail_next("data");
    let volume = "apiVersion: wharf/v1\nkind: Volume\nmetadata:\n  name: data\nspec: {}\n";
    let app = container("app", "busybox", "  mounts: [\"data:/data\"]\n");
    let d = desired(&[("v.yaml", volume), ("app.yaml", &app)]);
    let s = converge(&mut r, &d).await;
    let messages = r.volume_messages();
    assert!(
        messages["data"].contains("no space left on device")
            && messages["data"].contains("next try at"),
        "{messages:?}"
    );
    let (state, message) = state_of(&s, "app");
    assert_eq!(state, ContainerState::Pending);
    assert!(message.unwrap().contains("waiting for volume data"));
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let s = converge(&mut r, &d).await;
    assert_eq!(state_of(&s, "app").0, ContainerState::Running);
    assert!(r.volume_messages().is_empty());
}

/// The resync's sweep undoes the networking of a container the runtime no longer
/// lists (its detach failed after the removal), and keeps every listed one.
#[tokio::test]
async fn the_network_sweep_forgets_containers_that_are_gone() {
    let rt = Arc::new(FakeRuntime::default());
    let net = Arc::new(FakeNetwork::default());
    let mut r = Reconciler::new(Seams {
        network: net.clone(),
        ..seams(&rt)
    });
    converge(
        &mut r,
        &desired(&[("a.yaml", &container("app", "busybox", ""))]),
    )
    .await;
    let ghost = crate::net::AttachSpec {
        container: "ghost".into(),
        hostname: "ghost".into(),
        networks: vec!["default".into()],
        ports: vec![],
        standby: false,
    };
    net.attach(&ghost).await.unwrap();
    r.sweep_networks().await;
    let members: Vec<String> = net
        .statuses()
        .await
        .into_iter()
        .flat_map(|s| s.containers.into_iter().map(|m| m.name))
        .collect();
    assert_eq!(members, ["app"]);
}
