//! The read-only HTTP endpoint (`interfaces.md`, "The read-only HTTP endpoint").
//!
//! A thin translation layer: handlers read the [`StatusSnapshot`] that the agent
//! publishes on a `watch` channel (and the log files it names) and never call into the
//! reconciler, so a slow client can never stall reconciliation, and the core never
//! imports axum.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` while the reconcile loop and the manifest watcher both beat within their limits, else `503` naming the silent one |
//! | `GET /v1/containers` | array of container objects |
//! | `GET /v1/containers/{name}` | one container object, or `404` |
//! | `GET /v1/containers/{name}/logs?tail=N&follow=true` | its log as text; `follow` streams appended bytes |
//! | `GET /v1/manifests` | array of manifest reports |
//!
//! Any method but GET and HEAD answers `405`; unknown paths answer `404`; both with a
//! JSON body `{"error": "..."}`, as does every other failure.

mod handlers;
mod logs;
mod server;

pub use server::Limits;
pub mod metrics;

use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::reconciler::status::StatusSnapshot;

/// What the endpoint reads. Cheap to clone: every field is shared.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The latest published status; handlers only borrow it.
    pub status: watch::Receiver<Arc<StatusSnapshot>>,
    /// What must keep beating for `/healthz` to answer `ok`: the reconcile loop and the
    /// manifest watcher (a watcher stuck in a system call applied nothing while the
    /// endpoint still said `ok`).
    pub heartbeats: Vec<Heartbeat>,
}

/// One loop's sign of life.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Its name in a 503 message, e.g. "the manifest watcher".
    pub what: &'static str,
    /// Unix time in milliseconds of its last tick (0: never ticked).
    pub last: Arc<AtomicI64>,
    /// How long it may stay silent before `/healthz` answers 503.
    pub max_silence: Duration,
}

/// The router's state: the caller's [`ApiState`] plus the server's shutdown flag.
#[derive(Clone)]
struct AppState {
    api: ApiState,
    /// Turns true when [`serve_on`] begins its graceful shutdown; log followers end
    /// then, otherwise an open `follow` would keep the server from ever stopping.
    stopping: watch::Receiver<bool>,
}

/// Errors of binding and serving the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid listen address {listen:?}: expected HOST:PORT or unix:/path")]
    InvalidListen { listen: String },
    #[error("bind TCP {addr}")]
    BindTcp {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("create the directory of socket {path}")]
    CreateSocketDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket {path} is in use by another process (another agent?)")]
    SocketInUse { path: PathBuf },
    #[error("remove stale socket {path}")]
    RemoveStaleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bind unix socket {path}")]
    BindUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The endpoint's routes over `state`, for [`serve`] or for a caller's own server.
///
/// Log followers started through this router end only when their client goes away, the
/// container leaves the snapshot, or the status sender is dropped; [`serve_on`] also
/// ends them at shutdown.
pub fn router(state: ApiState) -> Router {
    // The sender is dropped at once: the flag then stays false forever.
    let (_, stopping) = watch::channel(false);
    build_router(state, stopping)
}

fn build_router(api: ApiState, stopping: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/v1/containers", get(handlers::list_containers))
        .route("/v1/containers/{name}", get(handlers::get_container))
        .route("/v1/containers/{name}/logs", get(handlers::container_logs))
        .route("/v1/manifests", get(handlers::list_manifests))
        .route("/v1/images", get(handlers::list_images))
        .route("/v1/networks", get(handlers::list_networks))
        .route("/v1/volumes", get(handlers::list_volumes))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        // Applied to every route and the fallback, so the method check covers unknown
        // paths too.
        .layer(axum::middleware::from_fn(handlers::read_only))
        .with_state(AppState { api, stopping })
}

/// A bound listening socket, so the caller can learn the real address (port 0) before
/// serving.
#[derive(Debug)]
pub enum BoundListener {
    Tcp(TcpListener),
    /// The listener and its socket path, removed again when serving ends.
    Unix(UnixListener, PathBuf),
}

impl BoundListener {
    /// `HOST:PORT` as bound, or `unix:/path`.
    pub fn local_addr(&self) -> String {
        match self {
            BoundListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp:?".to_owned(), |a| a.to_string()),
            BoundListener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// Binds `listen`: `HOST:PORT`, or `unix:/path` (a stale socket file left by a crashed
/// agent is removed first; a live one is an error).
pub async fn bind(listen: &str) -> Result<BoundListener, ApiError> {
    match listen.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => bind_unix(Path::new(path)).await,
        Some(_) => Err(ApiError::InvalidListen {
            listen: listen.to_owned(),
        }),
        None => TcpListener::bind(listen)
            .await
            .map(BoundListener::Tcp)
            .map_err(|source| ApiError::BindTcp {
                addr: listen.to_owned(),
                source,
            }),
    }
}

async fn bind_unix(path: &Path) -> Result<BoundListener, ApiError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| ApiError::CreateSocketDir {
                path: path.to_owned(),
                source,
            })?;
    }
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ApiError::NotASocket {
                path: path.to_owned(),
            })
        }
        Ok(_) => {
            // A socket file outlives the process that bound it. If something still
            // accepts on it, it is not stale: do not steal another agent's endpoint.
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ApiError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            tokio::fs::remove_file(path)
                .await
                .map_err(|source| ApiError::RemoveStaleSocket {
                    path: path.to_owned(),
                    source,
                })?;
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiError::BindUnix {
        path: path.to_owned(),
        source,
    })?;
    Ok(BoundListener::Unix(listener, path.to_owned()))
}

/// Binds `listen` and serves the endpoint until `shutdown` completes.
pub async fn serve(
    listen: &str,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let listener = bind(listen).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves the endpoint on an already bound listener until `shutdown` completes, then
/// ends open log followers and waits for in-flight requests.
pub async fn serve_on(
    listener: BoundListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    serve_with(listener, state, Limits::for_this_process(), shutdown).await
}

/// [`serve_on`] with explicit connection limits.
pub async fn serve_with(
    listener: BoundListener,
    state: ApiState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let listen = listener.local_addr();
    let (stop_tx, stopping) = watch::channel(false);
    let app = build_router(state, stopping);
    let shutdown = async move {
        shutdown.await;
        // Ignored error: no receiver left means no follower to end.
        let _ = stop_tx.send(true);
    };
    tracing::info!(
        listen = %listen,
        max_connections = limits.max_connections,
        "serving the read-only endpoint"
    );
    match listener {
        BoundListener::Tcp(l) => server::serve(l, app, limits, shutdown).await,
        BoundListener::Unix(l, path) => {
            server::serve(l, app, limits, shutdown).await;
            // Best effort: the next bind would remove it anyway.
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
    Ok(())
}
