//! Registry faults, from an in-process fake registry (axum on 127.0.0.1:0) serving a tiny
//! two-layer image built here with `tar`, `flate2` and `sha2`: corrupted and truncated
//! blobs, a 500 then success, a stalled server, 401/404, basic auth with credentials from
//! a Docker config file or a credential helper, and two concurrent pulls that must fetch
//! each blob once.
//! No root, no network beyond loopback.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use wharf::images::{ImageError, ImageStore, ProgressEvent, RegistryConfig};

const REPO: &str = "test/tiny";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A gzip'd tar with one file; returns (blob, diff id).
fn layer(name: &str, content: &[u8]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, name, content).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// A gzip'd tar whose second entry climbs out of the layer; returns (blob, diff id).
fn escaping_layer() -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_gnu();
    ok.set_size(3);
    ok.set_mode(0o644);
    ok.set_mtime(1_700_000_000);
    ok.set_uid(0);
    ok.set_gid(0);
    b.append_data(&mut ok, "fine.txt", &b"ok\n"[..]).unwrap();
    // `set_path` refuses `..`, as it should: write the name bytes directly.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_size(4);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append(&h, &b"bad\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// What the fake does wrong, and to which request.
#[derive(Clone, Default)]
struct Faults {
    /// Serve this blob with one byte flipped.
    corrupt: Option<String>,
    /// Declare the full length of this blob, send half, then cut the connection.
    truncate: Option<String>,
    /// With `truncate`: only the first this many requests are cut (0: all of them).
    truncate_times: usize,
    /// The config names a wrong diff id for the second layer.
    bad_diff_id: bool,
    /// The second layer (with a valid digest) holds an entry `../escape`.
    escaping_layer: bool,
    /// Answer this many manifest requests with 500 first.
    manifest_500s: usize,
    /// Send half of every blob, then stall this long.
    stall: Option<Duration>,
    /// Delay before answering a blob (to make concurrent pulls overlap).
    blob_delay: Option<Duration>,
    /// Require HTTP basic auth with these credentials.
    basic: Option<(String, String)>,
    /// Require a bearer token from `/token`, which wants these basic credentials.
    bearer: Option<(String, String)>,
    /// Answer this many blob uploads (the PUT closing an upload) with 500 first.
    upload_500s: usize,
    /// Answer manifests with 64 MiB of JSON-ish bytes: `Some(true)` announcing the
    /// length, `Some(false)` streamed without it.
    huge_manifest: Option<bool>,
    /// The manifest declares a 200 MB config.
    huge_config: bool,
}

struct Fake {
    manifest: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
    faults: Mutex<Faults>,
    /// Requests per path (GET only), to check retries and single fetches.
    hits: Mutex<HashMap<String, usize>>,
    /// Blobs pushed to it, by digest, and manifests by tag.
    pushed: Mutex<HashMap<String, Vec<u8>>>,
    /// Blob upload attempts (PUTs closing an upload).
    uploads: Mutex<usize>,
}

struct Registry {
    addr: String,
    fake: Arc<Fake>,
    layers: Vec<String>,
    config: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Registry {
    async fn start(faults: Faults) -> Self {
        let (l1, d1) = layer("hello.txt", b"hello from layer one\n");
        let (l2, mut d2) = if faults.escaping_layer {
            escaping_layer()
        } else {
            layer("etc/motd", &vec![b'x'; 300_000])
        };
        if faults.bad_diff_id {
            d2 = digest(b"something else");
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [d1, d2]},
        })
        .to_string()
        .into_bytes();
        let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": digest(b), "size": b.len()});
        let mut config_desc = desc("application/vnd.oci.image.config.v1+json", &config);
        if faults.huge_config {
            config_desc["size"] = serde_json::json!(200_000_000);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [
                desc("application/vnd.oci.image.layer.v1.tar+gzip", &l1),
                desc("application/vnd.oci.image.layer.v1.tar+gzip", &l2),
            ],
        })
        .to_string()
        .into_bytes();
        let layers = vec![digest(&l1), digest(&l2)];
        let config_digest = digest(&config);
        let blobs = HashMap::from([
            (layers[0].clone(), l1),
            (layers[1].clone(), l2),
            (config_digest.clone(), config),
        ]);
        let fake = Arc::new(Fake {
            manifest,
            blobs,
            faults: Mutex::new(faults),
            hits: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
            uploads: Mutex::new(0),
        });
        let app = axum::Router::new().fallback(serve).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            fake,
            layers,
            config: config_digest,
            server,
        }
    }

    fn reference(&self) -> String {
        format!("{}/{REPO}:latest", self.addr)
    }

    fn hits(&self, path_suffix: &str) -> usize {
        let hits = self.fake.hits.lock().unwrap();
        hits.iter()
            .filter(|(p, _)| p.ends_with(path_suffix))
            .map(|(_, n)| n)
            .sum()
    }

    /// A store under `dir` that reaches this registry over HTTP, with credentials (if
    /// any) from `docker_config`, never from the machine's own Docker config.
    fn store(
        &self,
        dir: &Path,
        docker_config: Option<&Path>,
        timeout: Option<Duration>,
    ) -> ImageStore {
        ImageStore::open_with(
            &dir.join("images"),
            RegistryConfig {
                insecure: vec![self.addr.clone()],
                mirrors: vec![],
                docker_config: Some(
                    docker_config
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| dir.join("no-docker-config.json")),
                ),
                timeout,
                max_layer_bytes: None,
                credential_helper_dir: None,
            },
        )
        .unwrap()
    }
}

fn error_envelope(status: StatusCode, code: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": code.to_lowercase()}]});
    (status, axum::Json(body)).into_response()
}

async fn serve(State(fake): State<Arc<Fake>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let req_uri_query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let headers: HeaderMap = req.headers().clone();
    if method == Method::GET {
        *fake.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    }
    let faults = fake.faults.lock().unwrap().clone();
    if let Some((u, p)) = &faults.basic {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        );
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&want)
        {
            let mut r = error_envelope(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"fake\"".parse().unwrap(),
            );
            return r;
        }
    }
    if let Some((u, p)) = &faults.bearer {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        );
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // The token service: Docker's token protocol, credentials as basic auth.
        if path == "/token" {
            let scope_ok = req_query_has(&req_uri_query, "scope=repository%3Atest%2Ftiny%3Apull")
                || req_query_has(&req_uri_query, "scope=repository:test/tiny:pull");
            if auth != Some(&basic) || !scope_ok {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            return axum::Json(serde_json::json!({"token": "tok-123", "expires_in": 300}))
                .into_response();
        }
        if auth != Some("Bearer tok-123") {
            let mut r = error_envelope(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                format!("Bearer realm=\"http://{host}/token\",service=\"fake\"")
                    .parse()
                    .unwrap(),
            );
            return r;
        }
    }
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    let Some(rest) = path.strip_prefix(&format!("/v2/{REPO}/")) else {
        return error_envelope(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    };
    if method != Method::GET && method != Method::HEAD {
        return receive(&fake, &method, rest, &req_uri_query, req).await;
    }
    if method == Method::HEAD {
        if let Some(d) = rest.strip_prefix("blobs/") {
            let known = fake.pushed.lock().unwrap().contains_key(d);
            return if known {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            }
            .into_response();
        }
    }
    if rest.starts_with("manifests/") {
        if faults.manifest_500s > 0 {
            fake.faults.lock().unwrap().manifest_500s -= 1;
            return (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response();
        }
        if let Some(announced) = faults.huge_manifest {
            const HUGE: usize = 64 << 20;
            let chunk = axum::body::Bytes::from(vec![b' '; 1 << 20]);
            let stream = futures_util::stream::iter(
                (0..HUGE >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            let mut r = Response::builder().header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            );
            if announced {
                r = r.header(header::CONTENT_LENGTH, HUGE);
            }
            return r.body(Body::from_stream(stream)).unwrap();
        }
        return Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .body(Body::from(fake.manifest.clone()))
            .unwrap();
    }
    let Some(d) = rest.strip_prefix("blobs/") else {
        return error_envelope(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let Some(blob) = fake.blobs.get(d).cloned() else {
        return error_envelope(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    };
    if let Some(delay) = faults.blob_delay {
        tokio::time::sleep(delay).await;
    }
    let len = blob.len();
    // The whole blob, as a 206 when asked for "bytes=0-" (wharf asks so; the real
    // registry honours it), else a 200.
    let whole = |body: Vec<u8>| {
        let ranged = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) == Some("bytes=0-");
        let mut r = Response::new(Body::from(body));
        if ranged {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes 0-{}/{len}", len - 1).parse().unwrap(),
            );
        }
        r
    };
    if faults.corrupt.as_deref() == Some(d) {
        let mut bad = blob;
        bad[len / 2] ^= 0xff;
        return whole(bad);
    }
    let cut = faults.truncate.as_deref() == Some(d)
        && (faults.truncate_times == 0
            || fake.hits.lock().unwrap()[&path] <= faults.truncate_times);
    if cut || faults.stall.is_some() {
        let half = axum::body::Bytes::from(blob[..len / 2].to_vec());
        let stall = faults.stall;
        let stream = async_stream(half, stall);
        return Response::builder()
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(stream))
            .unwrap();
    }
    whole(blob)
}

/// The push side of the distribution API: an upload session (`POST blobs/uploads/`),
/// a monolithic `PUT …?digest=` with the whole blob (checked), a manifest `PUT`.
async fn receive(fake: &Fake, method: &Method, rest: &str, query: &str, req: Request) -> Response {
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    if *method == Method::POST && rest == "blobs/uploads/" {
        return Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(
                header::LOCATION,
                format!("/v2/{REPO}/blobs/uploads/session-1"),
            )
            .body(Body::empty())
            .unwrap();
    }
    if *method == Method::PUT && rest.starts_with("blobs/uploads/") {
        *fake.uploads.lock().unwrap() += 1;
        {
            let mut faults = fake.faults.lock().unwrap();
            if faults.upload_500s > 0 {
                faults.upload_500s -= 1;
                return (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response();
            }
        }
        let Some(d) = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("digest="))
            .map(|d| d.replace("%3A", ":"))
        else {
            return error_envelope(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
        };
        if digest(&body) != d {
            return error_envelope(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
        }
        fake.pushed.lock().unwrap().insert(d.clone(), body);
        return Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{REPO}/blobs/{d}"))
            .body(Body::empty())
            .unwrap();
    }
    if *method == Method::PUT {
        if let Some(tag) = rest.strip_prefix("manifests/") {
            let d = digest(&body);
            fake.pushed
                .lock()
                .unwrap()
                .insert(format!("manifest:{tag}"), body);
            return Response::builder()
                .status(StatusCode::CREATED)
                .header("Docker-Content-Digest", d)
                .body(Body::empty())
                .unwrap();
        }
    }
    error_envelope(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
}

/// Half a body, then either a long stall or an error that makes the server drop the
/// connection before the declared length.
fn async_stream(
    half: axum::body::Bytes,
    stall: Option<Duration>,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    futures_util::stream::unfold(0u8, move |state| {
        let half = half.clone();
        async move {
            match state {
                0 => Some((Ok(half), 1)),
                1 => {
                    if let Some(d) = stall {
                        tokio::time::sleep(d).await;
                    }
                    Some((Err(std::io::Error::other("cut")), 2))
                }
                _ => None,
            }
        }
    })
}

fn req_query_has(query: &str, part: &str) -> bool {
    query.split('&').any(|p| p == part)
}

fn tmp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("images/tmp"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn clean_pull_stores_the_image_and_reports_progress_per_layer() {
    let reg = Registry::start(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (image, stats) = store
        .pull_with_progress(&reg.reference(), Some(tx))
        .await
        .unwrap();
    assert_eq!(stats.blobs_fetched, 3);
    assert_eq!(stats.layers_unpacked, 2);
    assert_eq!(
        std::fs::read(image.layers[0].join("hello.txt")).unwrap(),
        b"hello from layer one\n"
    );
    let mut done = Vec::new();
    let mut saw_bytes = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            ProgressEvent::LayerDone { digest } => done.push(digest),
            ProgressEvent::LayerBytes { current, total, .. } => {
                saw_bytes = true;
                assert!(current <= total);
            }
            _ => {}
        }
    }
    done.sort();
    let mut want = reg.layers.clone();
    want.sort();
    assert_eq!(done, want);
    assert!(saw_bytes);

    // A second pull downloads nothing and says every layer is present.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (_, stats) = store
        .pull_with_progress(&reg.reference(), Some(tx))
        .await
        .unwrap();
    assert_eq!((stats.blobs_fetched, stats.layers_unpacked), (0, 0));
    let mut present = 0;
    while let Some(ev) = rx.recv().await {
        if matches!(ev, ProgressEvent::LayerPresent { .. }) {
            present += 1;
        }
    }
    assert_eq!(present, 2);
}

#[tokio::test]
async fn corrupted_blob_fails_the_pull_and_stores_nothing() {
    let reg = Registry::start(Faults::default()).await;
    let bad = reg.layers[1].clone();
    reg.fake.faults.lock().unwrap().corrupt = Some(bad.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&bad), "{msg}");
    assert!(!store.content().has(&bad, None));
    assert!(store.lookup(&reg.reference()).unwrap().is_none());
    assert!(
        tmp_entries(dir.path()).is_empty(),
        "{:?}",
        tmp_entries(dir.path())
    );
    // A digest mismatch is not retried: the registry would send the same bytes.
    assert_eq!(reg.hits(&format!("blobs/{bad}")), 1);
}

#[tokio::test]
async fn truncated_body_is_retried_then_fails_and_stores_nothing() {
    let reg = Registry::start(Faults::default()).await;
    let cut = reg.layers[1].clone();
    reg.fake.faults.lock().unwrap().truncate = Some(cut.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(matches!(err, ImageError::FetchBlob { .. }), "{err}");
    assert!(err.to_string().contains(&cut), "{err}");
    assert!(!store.content().has(&cut, None));
    assert!(store.lookup(&reg.reference()).unwrap().is_none());
    assert!(tmp_entries(dir.path()).is_empty());
    assert!(
        reg.hits(&format!("blobs/{cut}")) > 1,
        "a cut connection is retried"
    );
}

#[tokio::test]
async fn body_cut_once_is_retried_and_unpacked_afresh() {
    let reg = Registry::start(Faults::default()).await;
    let cut = reg.layers[1].clone();
    {
        let mut f = reg.fake.faults.lock().unwrap();
        f.truncate = Some(cut.clone());
        f.truncate_times = 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let (image, stats) = store.pull_with_stats(&reg.reference()).await.unwrap();
    assert_eq!(reg.hits(&format!("blobs/{cut}")), 2);
    // The second try unpacked into a fresh directory: the file is whole, not half of
    // it twice.
    assert_eq!(
        std::fs::read(image.layers[1].join("etc/motd")).unwrap(),
        vec![b'x'; 300_000]
    );
    assert_eq!((stats.blobs_fetched, stats.layers_unpacked), (3, 2));
    assert!(store.content().has(&cut, None));
    assert!(tmp_entries(dir.path()).is_empty());
}

#[tokio::test]
async fn diff_id_mismatch_fails_the_pull_and_keeps_neither_layer_nor_blob() {
    let reg = Registry::start(Faults {
        bad_diff_id: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(matches!(err, ImageError::VerifyDiffId { .. }), "{err}");
    assert!(err.to_string().contains(&reg.layers[1]), "{err}");
    assert!(!store.content().has(&reg.layers[1], None));
    assert!(store.lookup(&reg.reference()).unwrap().is_none());
    assert!(tmp_entries(dir.path()).is_empty());
    let layers = std::fs::read_dir(dir.path().join("images/layers")).unwrap();
    assert!(layers.count() <= 1, "only the good layer may remain");
}

#[tokio::test]
async fn layer_escaping_its_directory_fails_the_pull_and_writes_nothing_outside() {
    let reg = Registry::start(Faults {
        escaping_layer: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::UnpackEntry { .. }), "{msg}");
    assert!(msg.contains("../escape"), "{msg}");
    assert!(!store.content().has(&reg.layers[1], None));
    assert!(tmp_entries(dir.path()).is_empty());
    assert!(!dir.path().join("images/escape").exists());
    assert!(!dir.path().join("images/tmp/escape").exists());
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let reg = Registry::start(Faults {
        manifest_500s: 1,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let image = store.pull(&reg.reference()).await.unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(reg.hits("manifests/latest"), 2);
}

#[tokio::test]
async fn a_push_streams_each_blob_and_retries_a_failed_upload() {
    let reg = Registry::start(Faults {
        upload_500s: 1,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let image = store.pull(&reg.reference()).await.unwrap();
    let target = format!("{}/{REPO}:pushed", reg.addr);
    store.tag(&reg.reference(), &target).unwrap();
    let digest = store.push(&target).await.unwrap();
    assert_eq!(digest, image.digest, "the same manifest, byte for byte");
    let pushed = reg.fake.pushed.lock().unwrap().clone();
    for d in reg.layers.iter().chain([&reg.config]) {
        assert_eq!(
            pushed.get(d.as_str()),
            reg.fake.blobs.get(d.as_str()),
            "{d}"
        );
    }
    assert_eq!(pushed["manifest:pushed"], reg.fake.manifest);
    // Three blobs, one upload answered 500 and tried again.
    assert_eq!(*reg.fake.uploads.lock().unwrap(), 4);
}

#[tokio::test]
async fn persistent_server_error_gives_up_after_a_bounded_number_of_tries() {
    let reg = Registry::start(Faults {
        manifest_500s: 100,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert!(err.to_string().contains(&reg.reference()), "{err}");
    let tries = reg.hits("manifests/latest");
    assert!((2..=6).contains(&tries), "{tries} tries");
}

#[tokio::test]
async fn stalled_server_gives_a_clear_timeout_error() {
    let reg = Registry::start(Faults {
        stall: Some(Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, Some(Duration::from_millis(500)));
    let started = std::time::Instant::now();
    let err = store.pull(&reg.reference()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::RegistryTimeout { .. }), "{msg}");
    assert!(
        msg.contains(&reg.reference()) && msg.contains(&reg.addr),
        "{msg}"
    );
    // Bounded: far less than the server's 30 s stall.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(tmp_entries(dir.path()).is_empty());
}

/// A registry that answers with a 64 MiB "manifest" is refused at the announced
/// length, or cut at the limit when it announces none; nothing is stored and the
/// pull is not retried (the answer would be the same).
#[tokio::test]
async fn an_oversized_manifest_is_refused_without_reading_it_all() {
    for announced in [true, false] {
        let reg = Registry::start(Faults {
            huge_manifest: Some(announced),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store = reg.store(dir.path(), None, None);
        let err = store.pull(&reg.reference()).await.unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { limit, .. } if limit == wharf::images::MAX_MANIFEST_BYTES),
            "{err}"
        );
        assert!(err.to_string().contains("the manifest"), "{err}");
        assert_eq!(reg.hits("manifests/latest"), 1, "retried");
        assert!(tmp_entries(dir.path()).is_empty());
    }
}

/// A layer that unpacks to more than the configured cap fails the pull cleanly: the
/// error names the cap, and no blob, layer or temp file is left.
#[tokio::test]
async fn a_layer_over_the_unpack_cap_fails_the_pull_and_leaves_nothing() {
    let reg = Registry::start(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open_with(
        &dir.path().join("images"),
        RegistryConfig {
            insecure: vec![reg.addr.clone()],
            docker_config: Some(dir.path().join("no-docker-config.json")),
            max_layer_bytes: Some(100_000),
            ..Default::default()
        },
    )
    .unwrap();
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(
        matches!(err, ImageError::LayerTooLarge { limit: 100_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--max-layer-size"), "{err}");
    assert!(tmp_entries(dir.path()).is_empty());
    let layers = std::fs::read_dir(dir.path().join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 1, "only the small first layer is kept");
}

/// A manifest that declares a 200 MB config is refused before the config is fetched.
#[tokio::test]
async fn an_oversized_config_is_refused_before_it_is_fetched() {
    let reg = Registry::start(Faults {
        huge_config: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                size: 200_000_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(reg.hits(&reg.config), 0);
}

#[tokio::test]
async fn missing_image_names_the_reference() {
    let reg = Registry::start(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = reg.store(dir.path(), None, None);
    let missing = format!("{}/test/missing:1.0", reg.addr);
    let err = store.pull(&missing).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::RegistryNotFound { .. }), "{msg}");
    assert!(msg.contains(&missing) && msg.contains("not found"), "{msg}");
    // A 404 is final: one request.
    assert_eq!(reg.hits("test/missing/manifests/1.0"), 1);
}

#[tokio::test]
async fn basic_auth_uses_the_docker_config_and_401_says_what_to_do() {
    let reg = Registry::start(Faults {
        basic: Some(("alice".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    // No credentials: a 401 naming the reference, the registry and the config file.
    let store = reg.store(dir.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::RegistryAccess { .. }), "{msg}");
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(msg.contains(&reg.reference()), "{msg}");
    assert!(
        msg.contains(&format!("credentials for {}", reg.addr)),
        "{msg}"
    );

    // Wrong password: still 401, now "check credentials".
    let cfg = dir.path().join("config.json");
    let auth =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}/v1/":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            auth("alice", "wrong")
        ),
    )
    .unwrap();
    let store = reg.store(dir.path(), Some(&cfg), None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(err.to_string().contains("check credentials"), "{err}");
    assert!(
        err.to_string().contains(&cfg.display().to_string()),
        "{err}"
    );

    // Right password, read again on the next pull of the same store.
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            auth("alice", "s3cret")
        ),
    )
    .unwrap();
    let image = store.pull(&reg.reference()).await.unwrap();
    assert_eq!(image.layers.len(), 2);
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_fetch_each_blob_once() {
    let reg = Registry::start(Faults {
        blob_delay: Some(Duration::from_millis(150)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Two tasks on one store (one agent) and a second store object on the same root
    // (what a `wharf pull` beside the agent looks like: separate state, shared disk).
    let a = reg.store(dir.path(), None, None);
    let b = reg.store(dir.path(), None, None);
    let r = reg.reference();
    let (x, y, z) = tokio::join!(
        a.pull_with_stats(&r),
        a.pull_with_stats(&r),
        b.pull_with_stats(&r)
    );
    let stats = [x.unwrap().1, y.unwrap().1, z.unwrap().1];
    for d in reg.layers.iter().chain([&reg.config]) {
        assert_eq!(reg.hits(&format!("blobs/{d}")), 1, "blob {d}");
    }
    assert_eq!(stats.iter().map(|s| s.blobs_fetched).sum::<usize>(), 3);
    assert_eq!(stats.iter().map(|s| s.layers_unpacked).sum::<usize>(), 2);
    assert!(
        !dir.path().join("images/locks").exists()
            || std::fs::read_dir(dir.path().join("images/locks"))
                .unwrap()
                .count()
                == 0
    );
}

#[tokio::test]
async fn bearer_token_auth_trades_docker_config_credentials_for_a_token() {
    let reg = Registry::start(Faults {
        bearer: Some(("bob".into(), "pw".into())),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"username":"bob","password":"pw"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let store = reg.store(dir.path(), Some(&cfg), None);
    let image = store.pull(&reg.reference()).await.unwrap();
    assert_eq!(image.layers.len(), 2);
    assert!(reg.hits("/token") >= 1);

    // Anonymous: the token service refuses, and the error says so.
    let other = tempfile::tempdir().unwrap();
    let store = reg.store(other.path(), None, None);
    let err = store.pull(&reg.reference()).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
}

#[tokio::test]
async fn docker_hub_images_come_from_the_first_working_mirror() {
    let reg = Registry::start(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // A mirror that refuses connections (a port just freed), then the fake.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let store = ImageStore::open_with(
        &dir.path().join("images"),
        RegistryConfig {
            insecure: vec![],
            mirrors: vec![format!("http://{dead}"), format!("http://{}/", reg.addr)],
            docker_config: Some(dir.path().join("none.json")),
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    )
    .unwrap();
    let image = store.pull("test/tiny").await.unwrap();
    assert_eq!(image.reference, "docker.io/test/tiny:latest");
    assert_eq!(image.layers.len(), 2);
    assert_eq!(reg.hits("manifests/latest"), 1);
}

/// An executable shell script at `path`.
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn credential_helper_supplies_basic_auth_and_a_failing_one_is_named() {
    let reg = Registry::start(Faults {
        basic: Some(("u".into(), "p".into())),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let helpers = dir.path().join("helpers");
    std::fs::create_dir(&helpers).unwrap();
    let asked = dir.path().join("asked");
    // The helper protocol: `get`, the server URL on stdin (no newline), JSON on stdout.
    write_script(
        &helpers.join("docker-credential-fake"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nserver=$(cat)\nprintf %s \"$server\" > {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"p\"}}' \"$server\"\n",
            asked.display()
        ),
    );
    write_script(
        &helpers.join("docker-credential-broken"),
        "#!/bin/sh\ncat >/dev/null\necho 'keychain is locked' >&2\nexit 1\n",
    );
    let cfg = dir.path().join("config.json");
    let open = |root: &str| {
        ImageStore::open_with(
            &dir.path().join(root),
            RegistryConfig {
                insecure: vec![reg.addr.clone()],
                docker_config: Some(cfg.clone()),
                credential_helper_dir: Some(helpers.clone()),
                ..Default::default()
            },
        )
        .unwrap()
    };

    std::fs::write(
        &cfg,
        format!(r#"{{"credHelpers":{{"{}":"fake"}}}}"#, reg.addr),
    )
    .unwrap();
    let image = open("a").pull(&reg.reference()).await.unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(std::fs::read_to_string(&asked).unwrap(), reg.addr);

    // `credsStore` runs the same protocol for every registry; a failing helper is a
    // configuration error that names the helper and passes on what it said.
    std::fs::write(&cfg, r#"{"credsStore":"broken"}"#).unwrap();
    let err = open("b").pull(&reg.reference()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Credentials { .. }), "{msg}");
    assert!(msg.contains("docker-credential-broken"), "{msg}");
    assert!(msg.contains("keychain is locked"), "{msg}");
    assert_eq!(
        reg.hits("manifests/latest"),
        1,
        "no request without credentials"
    );
}
