//! The endpoint's accept loop: HTTP/1.1 with bounds a hostile local client cannot
//! exhaust (`axum::serve` has none).
//!
//! With 1,100 idle connections held open, an agent at 1,024 open files failed to
//! reconcile with `EMFILE`, and `/healthz` stopped answering. Here:
//! - at most [`Limits::max_connections`] connections are open at once; the loop stops
//!   accepting while at the cap, so further clients wait in the kernel's backlog and
//!   cost the agent no descriptor;
//! - a client must send a whole request head within [`Limits::header_timeout`], and a
//!   kept-alive connection that sends no next request is closed after the same time
//!   (hyper restarts the header timer whenever it waits for a request);
//! - an `accept` that fails (`EMFILE` from elsewhere in the agent) backs off instead of
//!   spinning.
//!
//! - a client that stops reading is cut off once a write has waited
//!   [`Limits::write_timeout`]: otherwise a large response, or a `logs?follow=true`
//!   stream, that nobody reads would hold its slot forever.
//!
//! A response is not timed as a whole: a follower that reads streams for as long as it
//! likes. Followers count against the cap, and end when the agent stops.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// The bounds of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a request head, and to wait for the next request on a
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// How long a write may wait for the client to read.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The defaults, with the cap kept to a quarter of the descriptors this process
    /// may open, so the endpoint never takes what reconciling needs.
    pub fn for_this_process() -> Self {
        let limits = Limits::default();
        let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let quarter = usize::try_from(open_files / 4).unwrap_or(usize::MAX);
        Limits {
            max_connections: limits.max_connections.min(quarter).max(8),
            ..limits
        }
    }
}

/// How long after the shutdown signal open connections may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A listener of either kind, reduced to what the loop needs.
pub(super) trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then gives open connections
/// [`SHUTDOWN_GRACE`] to finish.
pub(super) async fn serve<L: Accept>(
    listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and the like: the condition lasts a while, so does the pause.
                tracing::warn!(error = %e, "accept on the endpoint failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let stream = WriteTimeout::new(stream, limits.write_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are the client's (a timeout, a reset): nothing to report.
            let _ = conn.await;
            drop(slot);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("endpoint connections still open after the shutdown grace; leaving them");
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `limit` for the peer
/// to make room (it stopped reading). Reads pass through.
struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Set while a write is pending: when it gives up.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteTimeout {
            inner,
            limit,
            waiting: None,
        }
    }

    /// `Pending` from the inner stream: arms (or checks) the deadline.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
