//! Request handlers: each reads the published status snapshot (or the log file it
//! names) and translates it to HTTP. No handler changes anything.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::logs::{self, FollowCtx, LogCursor};
use super::AppState;

/// Every answer that is not a success carries this body.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

fn no_such_container(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no container named {name:?}"),
    )
}

/// The endpoint is read-only as a whole: any method but GET and HEAD is refused before
/// routing, on known and unknown paths alike.
pub(crate) async fn read_only(request: Request, next: Next) -> Response {
    let method = request.method();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed: this endpoint is read-only (GET, HEAD)"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

pub(crate) async fn not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no such endpoint: {}", request.uri().path()),
    )
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Alive while every heartbeat ticked within its `max_silence`. A heartbeat of 0 means
/// the loop never ticked; one in the future (clock stepped back) counts as fresh.
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let now = now_millis();
    for beat in &state.api.heartbeats {
        let last = beat.last.load(Ordering::Relaxed);
        let silence = Duration::from_millis(u64::try_from(now - last).unwrap_or(0));
        if last > 0 && silence <= beat.max_silence {
            continue;
        }
        let message = if last > 0 {
            format!(
                "{} silent for {}s (limit {}s)",
                beat.what,
                silence.as_secs(),
                beat.max_silence.as_secs()
            )
        } else {
            format!("{} has not started", beat.what)
        };
        return error(StatusCode::SERVICE_UNAVAILABLE, &message);
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

pub(crate) async fn list_containers(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    Json(&snapshot.containers).into_response()
}

pub(crate) async fn get_container(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let snapshot = state.api.status.borrow().clone();
    match snapshot.container(&name) {
        Some(c) => Json(c).into_response(),
        None => no_such_container(&name),
    }
}

pub(crate) async fn list_manifests(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    Json(&snapshot.manifests).into_response()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    match super::metrics::render(&snapshot) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics"),
    }
}

pub(crate) async fn list_networks(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    Json(&snapshot.networks).into_response()
}

pub(crate) async fn list_volumes(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    Json(&snapshot.volumes).into_response()
}

pub(crate) async fn list_images(State(state): State<AppState>) -> Response {
    let snapshot = state.api.status.borrow().clone();
    Json(&snapshot.images).into_response()
}

/// Query of the logs endpoint. Kept as strings so a bad value gets our JSON error.
#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    tail: Option<String>,
    follow: Option<String>,
    previous: Option<String>,
}

/// `tail=N` or `tail=all` (Docker's spelling for everything).
fn parse_tail(raw: Option<&str>) -> Result<Option<usize>, String> {
    match raw {
        None | Some("all") | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("tail must be a number of lines or \"all\", not {s:?}")),
    }
}

fn parse_bool(what: &str, raw: Option<&str>) -> Result<bool, String> {
    match raw {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(s) => Err(format!("{what} must be true or false, not {s:?}")),
    }
}

pub(crate) async fn container_logs(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Response {
    let Path(name) = match name {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let (tail, follow, previous) = match (
        parse_tail(query.tail.as_deref()),
        parse_bool("follow", query.follow.as_deref()),
        parse_bool("previous", query.previous.as_deref()),
    ) {
        (Ok(t), Ok(f), Ok(p)) => (t, f, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &e)
        }
    };

    let snapshot = state.api.status.borrow().clone();
    let Some(container) = snapshot.container(&name) else {
        return no_such_container(&name);
    };
    if previous {
        // As kubectl: the run before the current one, after a restart or a replace.
        let Some(prev) = container.previous_log.clone() else {
            return error(
                StatusCode::CONFLICT,
                &format!("container {name:?} has no previous run (it was neither restarted nor replaced)"),
            );
        };
        return match LogCursor::open_range(prev.path, tail, Some(prev.start..prev.end)).await {
            Ok(cursor) => text_response(Body::from_stream(logs::stream(cursor, None))),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the previous log of {name:?}: {e}"),
            ),
        };
    }
    let Some(path) = container.log_path.clone() else {
        // Nothing written yet (e.g. pending on an image pull): an empty log, as Docker
        // shows for a created container. A follower cannot learn a later path, so it
        // ends too; the client can ask again.
        return text_response(Body::empty());
    };
    let cursor = match LogCursor::open(path.clone(), tail).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(container = %name, path = %path.display(), error = %e, "reading log file");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the log of {name:?}: {e}"),
            );
        }
    };
    let follow = follow.then(|| FollowCtx {
        name,
        status: state.api.status.clone(),
        stopping: state.stopping.clone(),
        poll: logs::FOLLOW_POLL,
    });
    text_response(Body::from_stream(logs::stream(cursor, follow)))
}

fn text_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // A follower's bytes must reach the client as they come, not when a proxy
            // (nginx) decides to flush.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_accepts_numbers_and_all() {
        assert_eq!(parse_tail(None), Ok(None));
        assert_eq!(parse_tail(Some("all")), Ok(None));
        assert_eq!(parse_tail(Some("5")), Ok(Some(5)));
        assert!(parse_tail(Some("-1")).is_err());
        assert!(parse_tail(Some("five")).is_err());
    }

    #[test]
    fn follow_accepts_booleans_and_a_bare_flag() {
        assert_eq!(parse_bool("follow", None), Ok(false));
        assert_eq!(parse_bool("follow", Some("")), Ok(true));
        assert_eq!(parse_bool("follow", Some("true")), Ok(true));
        assert_eq!(parse_bool("follow", Some("0")), Ok(false));
        assert!(parse_bool("follow", Some("yes")).is_err());
    }
}
