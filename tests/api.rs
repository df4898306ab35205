//! The read-only endpoint and the client commands, over real sockets, against a fixed
//! status snapshot and a temporary log file. No privileges needed.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use wharf::api::{self, ApiError, ApiState};
use wharf::client::{self, ClientError, LogOptions};
use wharf::reconciler::status::{
    ContainerState, ContainerStatus, ImageStatus, ManifestError, ManifestReport, StatusSnapshot,
};

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn container(name: &str, log_path: Option<PathBuf>) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        state: ContainerState::Running,
        pid: Some(4242),
        image: "127.0.0.1:5099/test/busybox:latest".to_owned(),
        image_digest: Some("sha256:abc".to_owned()),
        restart_count: 1,
        started_at: Some("2026-11-27T21:00:00Z".to_owned()),
        source: Some(format!("{name}.yaml")),
        spec_hash: Some("h1".to_owned()),
        log_path,
        ..Default::default()
    }
}

/// A server on a loopback port with a two-container snapshot; `web` has a log file.
struct Server {
    url: String,
    status: watch::Sender<Arc<StatusSnapshot>>,
    heartbeat: Arc<AtomicI64>,
    watcher: Arc<AtomicI64>,
    log: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ApiError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(listen: &str) -> Self {
        Self::start_with(listen, api::Limits::default()).await
    }

    async fn start_with(listen: &str, limits: api::Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("web.log");
        std::fs::write(&log, "one\ntwo\nthree\nfour\n").unwrap();
        let mut failed = container("db", None);
        failed.state = ContainerState::Failed;
        failed.pid = None;
        failed.exit_code = Some(127);
        failed.message = Some("exec: \"postgres\": not found".to_owned());
        let snapshot = StatusSnapshot {
            standby_health_targets: Vec::new(),
            containers: vec![container("web", Some(log.clone())), failed],
            manifests: vec![ManifestReport {
                file: "web.yaml".to_owned(),
                objects: vec!["Container/web".to_owned()],
                errors: vec![ManifestError {
                    message: "unknown field `imagee`".to_owned(),
                    line: Some(3),
                    column: Some(5),
                }],
            }],
            images: vec![ImageStatus {
                references: vec!["127.0.0.1:5099/test/busybox:latest".to_owned()],
                digest: "sha256:abc".to_owned(),
                size: 1234,
                layers: 1,
                last_used: Some("2026-11-27T21:00:00Z".to_owned()),
                used_by: vec!["web".to_owned()],
            }],
            networks: vec![wharf::net::NetworkStatus {
                name: "default".to_owned(),
                driver: wharf::net::driver::NetworkKind::Bridge,
                subnet: Some("10.88.0.0/16".to_owned()),
                gateway: Some("10.88.0.1".parse().unwrap()),
                bridge: Some("wh0a1b2cb0".to_owned()),
                internal: false,
                containers: vec![wharf::net::NetworkMember {
                    name: "web".to_owned(),
                    ip: "10.88.0.2".parse().unwrap(),
                }],
                message: None,
            }],
            volumes: vec![wharf::reconciler::status::VolumeStatus {
                name: "data".to_owned(),
                path: "/var/lib/wharf/volumes/data/data".to_owned(),
                size: 8192,
                reclaim_policy: wharf::manifest::ReclaimPolicy::Delete,
                declared: true,
                source: Some("data.yaml".to_owned()),
                state: "ready".to_owned(),
                populated: true,
                created_at: Some("2026-11-28T01:00:00Z".to_owned()),
                used_by: vec!["web".to_owned()],
                message: None,
            }],
        };
        let (status, rx) = watch::channel(Arc::new(snapshot));
        let heartbeat = Arc::new(AtomicI64::new(now_millis()));
        let watcher = Arc::new(AtomicI64::new(now_millis()));
        let beat = |what, last: &Arc<AtomicI64>| api::Heartbeat {
            what,
            last: last.clone(),
            max_silence: Duration::from_secs(5),
        };
        let state = ApiState {
            status: rx,
            heartbeats: vec![
                beat("the reconcile loop", &heartbeat),
                beat("the manifest watcher", &watcher),
            ],
        };
        let listener = api::bind(listen).await.unwrap();
        let addr = listener.local_addr();
        let url = match addr.strip_prefix("unix:") {
            Some(_) => addr.clone(),
            None => format!("http://{addr}"),
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve_with(listener, state, limits, async move {
            let _ = shutdown_rx.await;
        }));
        Server {
            url,
            status,
            heartbeat,
            watcher,
            log,
            shutdown: Some(shutdown),
            task,
            _dir: dir,
        }
    }

    fn hosts(&self) -> Vec<String> {
        vec![self.url.clone()]
    }

    async fn stop(mut self) -> Result<(), ApiError> {
        self.shutdown.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server did not stop within 5s")
            .unwrap()
    }
}

fn http() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider; plain HTTP still needs one to
    // build a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(server: &Server, path: &str) -> (u16, String, String) {
    let response = http()
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A loopback port where nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A client that connects and sends nothing (or half a request) is cut off after the
/// header timeout, and however many of them there are, a real request is still served:
/// they used to pile up until the agent ran out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_cut_off_and_never_lock_out_a_real_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = api::Limits {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
        ..api::Limits::default()
    };
    let server = Server::start_with("127.0.0.1:0", limits).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for i in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    // Served, though 100 idle clients came first and the cap is 8 (the timeout only
    // turns a hang into a failure).
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(60), get(&server, "/healthz"))
        .await
        .expect("locked out by idle clients");
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The first idle ones were accepted, then closed by the server.
    for s in idle.iter_mut().take(4) {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an idle connection stayed open past the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    drop(idle);
    server.stop().await.unwrap();
}

/// A client that asks for a large log and never reads it is cut off once the server's
/// write has waited the write timeout, and its slot serves the next client (with one
/// slot, `/healthz` would otherwise never be answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_its_slot_back() {
    use tokio::io::AsyncWriteExt;
    let limits = api::Limits {
        max_connections: 1,
        write_timeout: Duration::from_millis(300),
        ..api::Limits::default()
    };
    let server = Server::start_with("127.0.0.1:0", limits).await;
    std::fs::write(&server.log, "x".repeat(63).repeat(1 << 18) + "\n").unwrap();
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut hog = tokio::net::TcpStream::connect(&addr).await.unwrap();
    hog.write_all(b"GET /v1/containers/web/logs HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(20), get(&server, "/healthz"))
        .await
        .expect("the slot was never given back");
    assert_eq!((status, body.as_str()), (200, "ok"));
    drop(hog);
    server.stop().await.unwrap();
}

/// A kept-alive connection serves several requests, and is closed once it idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_once_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = api::Limits {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
        ..api::Limits::default()
    };
    let server = Server::start_with("127.0.0.1:0", limits).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle kept-alive connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_is_ok_while_the_heartbeat_is_fresh_and_503_when_stale() {
    let server = Server::start().await;
    let (status, content_type, body) = get(&server, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    server
        .heartbeat
        .store(now_millis() - 60_000, Ordering::Relaxed);
    let (status, _, body) = get(&server, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        json(&body)["error"].as_str().unwrap().contains("silent"),
        "{body}"
    );

    server.heartbeat.store(0, Ordering::Relaxed);
    assert_eq!(get(&server, "/healthz").await.0, 503);

    server.heartbeat.store(now_millis(), Ordering::Relaxed);
    assert_eq!(get(&server, "/healthz").await.0, 200);

    // A watcher stuck in a system call no longer passes for healthy.
    server
        .watcher
        .store(now_millis() - 60_000, Ordering::Relaxed);
    let (status, _, body) = get(&server, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("the manifest watcher silent for"),
        "{body}"
    );
    server.watcher.store(now_millis(), Ordering::Relaxed);
    assert_eq!(get(&server, "/healthz").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn containers_are_listed_as_camel_case_objects() {
    let server = Server::start().await;
    let (status, content_type, body) = get(&server, "/v1/containers").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let list = json(&body);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let web = &list[0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["state"], "running");
    assert_eq!(web["pid"], 4242);
    assert_eq!(web["imageDigest"], "sha256:abc");
    assert_eq!(web["restartCount"], 1);
    assert!(web["exitCode"].is_null());
    assert_eq!(web["startedAt"], "2026-11-27T21:00:00Z");
    assert_eq!(web["source"], "web.yaml");
    assert_eq!(web["specHash"], "h1");
    assert!(web.get("logPath").is_none(), "log path leaked: {web}");
    assert_eq!(list[1]["state"], "failed");

    // A newly published snapshot is what the next request sees.
    server.status.send_modify(|s| {
        let mut next = StatusSnapshot::clone(s);
        next.containers.pop();
        *s = Arc::new(next);
    });
    let (_, _, body) = get(&server, "/v1/containers").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn one_container_by_name_or_404_with_a_json_error() {
    let server = Server::start().await;
    let (status, _, body) = get(&server, "/v1/containers/db").await;
    assert_eq!(status, 200);
    let db = json(&body);
    assert_eq!(db["exitCode"], 127);
    assert_eq!(db["message"], "exec: \"postgres\": not found");

    let (status, content_type, body) = get(&server, "/v1/containers/nope").await;
    assert_eq!(status, 404);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(json(&body)["error"].as_str().unwrap().contains("nope"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn manifests_list_objects_and_errors() {
    let server = Server::start().await;
    let (status, _, body) = get(&server, "/v1/manifests").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!([{
            "file": "web.yaml",
            "objects": ["Container/web"],
            "errors": [{"message": "unknown field `imagee`", "line": 3, "column": 5}],
        }])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_are_prometheus_text_from_the_snapshot() {
    let server = Server::start().await;
    let (status, content_type, body) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        body.contains("wharf_containers{state=\"running\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("wharf_containers{state=\"failed\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("wharf_manifest_errors{file=\"web.yaml\"} 1"),
        "{body}"
    );
    assert!(body.contains("wharf_image_bytes 1234"), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn volumes_list_path_size_policy_and_users() {
    let server = Server::start().await;
    let (status, _, body) = get(&server, "/v1/volumes").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!([{
            "name": "data",
            "path": "/var/lib/wharf/volumes/data/data",
            "size": 8192,
            "reclaimPolicy": "Delete",
            "declared": true,
            "source": "data.yaml",
            "state": "ready",
            "populated": true,
            "createdAt": "2026-11-28T01:00:00Z",
            "usedBy": ["web"],
        }])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn networks_list_subnet_gateway_bridge_and_members() {
    let server = Server::start().await;
    let (status, _, body) = get(&server, "/v1/networks").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!([{
            "name": "default",
            "driver": "bridge",
            "subnet": "10.88.0.0/16",
            "gateway": "10.88.0.1",
            "bridge": "wh0a1b2cb0",
            "internal": false,
            "containers": [{"name": "web", "ip": "10.88.0.2"}],
            "message": null,
        }])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn images_list_references_size_and_users() {
    let server = Server::start().await;
    let (status, _, body) = get(&server, "/v1/images").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!([{
            "references": ["127.0.0.1:5099/test/busybox:latest"],
            "digest": "sha256:abc",
            "size": 1234,
            "layers": 1,
            "lastUsed": "2026-11-27T21:00:00Z",
            "usedBy": ["web"],
        }])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn logs_are_plain_text_with_an_optional_tail() {
    let server = Server::start().await;
    let (status, content_type, body) = get(&server, "/v1/containers/web/logs").await;
    assert_eq!((status, body.as_str()), (200, "one\ntwo\nthree\nfour\n"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    let (_, _, body) = get(&server, "/v1/containers/web/logs?tail=2").await;
    assert_eq!(body, "three\nfour\n");
    let (_, _, body) = get(&server, "/v1/containers/web/logs?tail=0").await;
    assert_eq!(body, "");
    let (_, _, body) = get(&server, "/v1/containers/web/logs?tail=100").await;
    assert_eq!(body, "one\ntwo\nthree\nfour\n");

    let (status, _, body) = get(&server, "/v1/containers/web/logs?tail=many").await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("tail"));

    // No log file yet (pending): an empty log, not an error.
    let (status, _, body) = get(&server, "/v1/containers/db/logs").await;
    assert_eq!((status, body.as_str()), (200, ""));

    let (status, _, body) = get(&server, "/v1/containers/nope/logs").await;
    assert_eq!(status, 404);
    assert!(json(&body)["error"].is_string());
    server.stop().await.unwrap();
}

/// Reads from a streaming response until `want` has appeared in what was received.
async fn read_until(response: &mut reqwest::Response, got: &mut String, want: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !got.contains(want) {
            let chunk = response.chunk().await.unwrap().expect("stream ended early");
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} within 5s; got {got:?}"));
}

#[tokio::test]
async fn followed_logs_stream_appended_lines_until_the_container_is_removed() {
    let server = Server::start().await;
    let mut response = http()
        .get(format!(
            "{}/v1/containers/web/logs?tail=1&follow=true",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut got = String::new();
    read_until(&mut response, &mut got, "four\n").await;
    assert_eq!(got, "four\n");

    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&server.log)
        .unwrap();
    log.write_all(b"five\n").unwrap();
    read_until(&mut response, &mut got, "five\n").await;
    log.write_all(b"six\n").unwrap();
    read_until(&mut response, &mut got, "six\n").await;
    assert_eq!(got, "four\nfive\nsix\n");

    // Truncation (a rotated log) starts over from the top.
    std::fs::write(&server.log, "fresh\n").unwrap();
    read_until(&mut response, &mut got, "fresh\n").await;

    server.status.send_modify(|s| {
        let mut next = StatusSnapshot::clone(s);
        next.containers.retain(|c| c.name != "web");
        *s = Arc::new(next);
    });
    let end = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("follow did not end after the container was removed");
    assert!(end.unwrap().is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_followers() {
    let server = Server::start().await;
    let mut response = http()
        .get(format!("{}/v1/containers/web/logs?follow=1", server.url))
        .send()
        .await
        .unwrap();
    let mut got = String::new();
    read_until(&mut response, &mut got, "four\n").await;
    // Within `stop`'s 5 s: graceful shutdown must not wait for the follower forever.
    server.stop().await.unwrap();
    drop(response);
}

#[tokio::test]
async fn only_get_and_head_are_allowed_and_unknown_paths_are_404() {
    let server = Server::start().await;
    let client = http();
    for (method, path) in [
        (reqwest::Method::POST, "/v1/containers"),
        (reqwest::Method::PUT, "/v1/containers/web"),
        (reqwest::Method::DELETE, "/v1/containers/web"),
        (reqwest::Method::PATCH, "/healthz"),
        (reqwest::Method::DELETE, "/no/such/path"),
    ] {
        let response = client
            .request(method.clone(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let body = json(&response.text().await.unwrap());
        assert!(
            body["error"].as_str().unwrap().contains("read-only"),
            "{body}"
        );
    }

    for path in ["/", "/v1", "/v1/secrets", "/v1/containers/web/logs/extra"] {
        let (status, content_type, body) = get(&server, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        assert!(
            json(&body)["error"].as_str().unwrap().contains(path),
            "{body}"
        );
    }

    let head = client
        .head(format!("{}/v1/containers", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.text().await.unwrap(), "");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn serves_on_a_unix_socket_and_replaces_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run").join("api.sock");
    // A socket file left behind by a crashed agent: bound once, nobody listening.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let listen = format!("unix:{}", socket.display());
    let server = Server::start_on(&listen).await;
    assert_eq!(server.url, listen);

    // A second agent on the same live socket must not steal it.
    let err = api::bind(&listen).await.unwrap_err();
    assert!(matches!(err, ApiError::SocketInUse { .. }), "{err}");

    let mut out = Vec::new();
    client::inspect_to(&server.hosts(), "web", &mut out, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(json(std::str::from_utf8(&out).unwrap())["name"], "web");

    server.stop().await.unwrap();
    assert!(!socket.exists(), "socket file left after shutdown");
}

#[tokio::test]
async fn refuses_to_replace_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let err = api::bind(&format!("unix:{}", path.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    assert!(matches!(
        api::bind("unix:").await.unwrap_err(),
        ApiError::InvalidListen { .. }
    ));
}

#[tokio::test]
async fn client_status_prints_a_sorted_table() {
    let server = Server::start().await;
    let mut out = Vec::new();
    let mut err = Vec::new();
    client::status_to(&server.hosts(), &mut out, &mut err)
        .await
        .unwrap();
    let table = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME "), "{table}");
    for column in [
        "STATE",
        "PID",
        "IMAGE",
        "RESTARTS",
        "EXIT-CODE",
        "AGE",
        "MESSAGE",
    ] {
        assert!(lines[0].contains(column), "{column} missing: {table}");
    }
    assert!(!lines[0].contains("HOST"), "{table}");
    // Sorted by name: db before web.
    assert!(lines[1].starts_with("db "), "{table}");
    assert!(
        lines[1].contains("failed") && lines[1].contains("127"),
        "{table}"
    );
    assert!(lines[1].contains("postgres"), "{table}");
    assert!(
        lines[2].starts_with("web ") && lines[2].contains("4242"),
        "{table}"
    );
    assert!(err.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn client_status_with_several_hosts_shows_those_that_answer() {
    let server = Server::start().await;
    let dead = dead_url();
    let hosts = vec![server.url.clone(), dead.clone()];
    let mut out = Vec::new();
    let mut err = Vec::new();
    client::status_to(&hosts, &mut out, &mut err).await.unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(table.starts_with("HOST "), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with(&server.url),
        "{table}"
    );
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains(&dead), "{err}");

    let none = vec![dead.clone(), dead_url()];
    let e = client::status_to(&none, &mut Vec::new(), &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn client_reports_an_unreachable_agent_with_exit_code_3() {
    let hosts = vec![dead_url()];
    let e = client::status(&hosts).await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert_eq!(e.exit_code(), 3);
    let e = client::inspect(&hosts, "web").await.unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    let e = client::logs(&hosts, "web", LogOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
}

#[tokio::test]
async fn client_inspect_prints_pretty_json_or_fails_with_exit_code_1() {
    let server = Server::start().await;
    let mut out = Vec::new();
    client::inspect_to(&server.hosts(), "web", &mut out, &mut Vec::new())
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\n  \"name\": \"web\""), "not pretty: {text}");
    assert_eq!(json(&text)["imageDigest"], "sha256:abc");

    let e = client::inspect_to(&server.hosts(), "nope", &mut Vec::new(), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NotFound { .. }), "{e}");
    assert_eq!(e.exit_code(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn client_logs_uses_the_first_host_that_has_the_container() {
    let first = Server::start().await;
    let second = Server::start().await;
    // Only the second agent runs `web`.
    first.status.send_modify(|s| {
        let mut next = StatusSnapshot::clone(s);
        next.containers.retain(|c| c.name != "web");
        *s = Arc::new(next);
    });
    std::fs::write(&second.log, "from second\nlast line\n").unwrap();
    let hosts = vec![first.url.clone(), second.url.clone()];
    let mut out = Vec::new();
    client::logs_to(&hosts, "web", tail(1), &mut out, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "last line\n");

    let e = client::logs_to(
        &hosts,
        "nope",
        LogOptions::default(),
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

fn tail(n: usize) -> LogOptions {
    LogOptions {
        tail: Some(n),
        ..Default::default()
    }
}

/// A writer that hands each write to the test as it happens.
struct ChannelWriter(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects the client's output until `want` has appeared.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    got: &mut String,
    want: &str,
) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !got.contains(want) {
            let chunk = rx.recv().await.expect("client output ended early");
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} within 5s; got {got:?}"));
}

#[tokio::test]
async fn client_logs_follow_streams_until_the_container_is_gone() {
    let server = Server::start().await;
    let hosts = server.hosts();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        client::logs_to(
            &hosts,
            "web",
            LogOptions {
                follow: true,
                ..tail(1)
            },
            &mut ChannelWriter(tx),
            &mut Vec::new(),
        )
        .await
    });
    let mut got = String::new();
    // The tail arriving proves the follower is connected before anything changes.
    wait_for(&mut rx, &mut got, "four\n").await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&server.log)
        .unwrap();
    file.write_all(b"appended\n").unwrap();
    wait_for(&mut rx, &mut got, "appended\n").await;
    assert_eq!(got, "four\nappended\n");

    server.status.send_modify(|s| {
        let mut next = StatusSnapshot::clone(s);
        next.containers.clear();
        *s = Arc::new(next);
    });
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("follow did not end after the container was removed")
        .unwrap()
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_follower_stops_polling_when_its_client_goes_away() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start().await;
    // Every clone of the status receiver: the router's, and per connection the router
    // clone serving it plus the follower's own. Back to `idle` means both are gone.
    // Counted after one request, once the server task has built its router.
    assert_eq!(get(&server, "/healthz").await.0, 200);
    let idle = server.status.receiver_count();
    let addr = server.url.strip_prefix("http://").unwrap();
    // A raw connection, so that dropping it really closes the socket (an HTTP client
    // may keep it open until more data arrives).
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /v1/containers/web/logs?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("four\n") {
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no tail within 5s");
    assert!(server.status.receiver_count() > idle);
    drop(socket);
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.status.receiver_count() > idle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the follower kept running after its client left");
    server.stop().await.unwrap();
}
