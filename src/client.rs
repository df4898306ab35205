//! Client commands that read agents' endpoints: `status` (`ps`), `logs`, `inspect`.
//!
//! A host is a URL (`http://127.0.0.1:7878`), a bare `HOST:PORT` (plain HTTP), or
//! `unix:/path` for an agent listening on a socket. Each command has a `*_to` variant
//! that writes to given sinks, which is what the plain one calls with stdout and stderr.
//!
//! Exit codes (`interfaces.md`): 3 when no agent could be reached, 1 for a reported
//! failure (unknown container, an error answer), 2 for an unusable `--host`.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::reconciler::status::{ContainerStatus, VolumeStatus};

/// Giving up on connecting quickly matters with several hosts: one dead host must not
/// hold the whole table for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For every request but a followed log, which may stream for hours.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The MESSAGE column is cut to this many characters; `inspect` shows all of it.
const MESSAGE_WIDTH: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("build the HTTP client")]
    BuildClient {
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot reach the agent at {host}")]
    Unreachable {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    /// Several hosts were given and none answered; each was reported on stderr.
    #[error("no agent could be reached ({})", hosts.join(", "))]
    NoneReachable { hosts: Vec<String> },
    #[error("no container named {name:?} on {}", hosts.join(", "))]
    NotFound { name: String, hosts: Vec<String> },
    #[error("{host} answered {status}: {message}")]
    Http {
        host: String,
        status: u16,
        message: String,
    },
    #[error("read the answer of {host}")]
    ReadAnswer {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("write the output")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The process exit code for this failure (`interfaces.md`, "Client commands").
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::NoneReachable { .. } => 3,
            ClientError::InvalidHost { .. } => 2,
            _ => 1,
        }
    }
}

/// One agent to ask.
struct Target {
    /// As the user wrote it, for messages and the HOST column.
    name: String,
    base: Url,
    client: reqwest::Client,
}

impl Target {
    fn parse(host: &str) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidHost {
            host: host.to_owned(),
            reason,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        let base = if let Some(path) = host.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("expected unix:/path/to/socket".to_owned()));
            }
            builder = builder.unix_socket(path);
            // The authority is ignored on a socket but HTTP/1.1 needs a Host header.
            Url::parse("http://localhost/").map_err(|e| invalid(e.to_string()))?
        } else if host.contains("://") {
            Url::parse(host).map_err(|e| invalid(e.to_string()))?
        } else {
            Url::parse(&format!("http://{host}")).map_err(|e| invalid(e.to_string()))?
        };
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("expected an http:// or https:// URL".to_owned()));
        }
        ensure_crypto_provider();
        let client = builder
            .build()
            .map_err(|source| ClientError::BuildClient { source })?;
        Ok(Self {
            name: host.to_owned(),
            base,
            client,
        })
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Keeps a base path prefix (an agent behind a reverse proxy at /wharf/).
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// GETs `url`; `Ok(None)` on 404, an error for any other failure answer.
    async fn get(
        &self,
        url: Url,
        timeout: Option<Duration>,
    ) -> Result<Option<reqwest::Response>, ClientError> {
        let mut request = self.client.get(url);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                host: self.name.clone(),
                source,
            })?;
        match response.status() {
            s if s.is_success() => Ok(Some(response)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(ClientError::Http {
                host: self.name.clone(),
                status: status.as_u16(),
                message: error_message(response).await,
            }),
        }
    }

    /// A JSON array the agent serves at `segments` (`["v1", "containers"]`).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Vec<T>, ClientError> {
        let url = self.url(segments);
        let Some(response) = self.get(url, Some(REQUEST_TIMEOUT)).await? else {
            return Err(ClientError::Http {
                host: self.name.clone(),
                status: 404,
                message: format!("no /{} here: is this a wharf agent?", segments.join("/")),
            });
        };
        response
            .json()
            .await
            .map_err(|source| ClientError::ReadAnswer {
                host: self.name.clone(),
                source,
            })
    }
}

/// reqwest is built without a bundled crypto provider (so aws-lc's C is never built);
/// HTTPS hosts need one installed before a client is built. Ring is already in the tree.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread's install is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The `error` field of a JSON error answer, else the body as text.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn parse_targets(hosts: &[String]) -> Result<Vec<Target>, ClientError> {
    hosts.iter().map(|h| Target::parse(h)).collect()
}

/// An error with its causes on one line, for per-host reports on stderr.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Writes and flushes at once, so a followed log shows lines as they come. Blocking
/// writes are fine here: these are one-shot CLI commands, not the agent.
fn write_all(out: &mut impl io::Write, bytes: &[u8]) -> Result<(), ClientError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|source| ClientError::Output { source })
}

/// Reports a host that failed while others are still asked (several hosts only).
fn report(err: &mut impl io::Write, error: &ClientError) {
    // Nothing better to do if stderr itself is gone.
    let _ = write_all(err, format!("wharf: {}\n", chain(error)).as_bytes());
}

/// `wharf status`: a table of every container of every host.
pub async fn status(hosts: &[String]) -> Result<(), ClientError> {
    status_to(hosts, &mut io::stdout(), &mut io::stderr()).await
}

/// [`status`] writing the table to `out` and per-host failures to `err`.
pub async fn status_to(
    hosts: &[String],
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> Result<(), ClientError> {
    let now = OffsetDateTime::now_utc();
    list_to(
        hosts,
        &["v1", "containers"],
        |c: &ContainerStatus| c.name.clone(),
        |rows, with_host| render_table(rows, with_host, now),
        out,
        err,
    )
    .await
}

/// `wharf volumes`: a table of the named volumes of every host.
pub async fn volumes(hosts: &[String]) -> Result<(), ClientError> {
    volumes_to(hosts, &mut io::stdout(), &mut io::stderr()).await
}

/// [`volumes`] writing the table to `out` and per-host failures to `err`.
pub async fn volumes_to(
    hosts: &[String],
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> Result<(), ClientError> {
    list_to(
        hosts,
        &["v1", "volumes"],
        |v: &VolumeStatus| v.name.clone(),
        render_volumes,
        out,
        err,
    )
    .await
}

/// Asks every host for the list at `segments` at once, sorts each host's items by `key`
/// and writes `render(rows, several hosts)` to `out`.
///
/// With one host its failure is the result. With several, a failing host is reported
/// on `err` and the others are still shown; the result is `NoneReachable` (exit 3) only
/// if no host answered, and the first other failure if some host failed otherwise.
async fn list_to<T>(
    hosts: &[String],
    segments: &'static [&'static str],
    key: impl Fn(&T) -> String,
    render: impl FnOnce(&[(String, T)], bool) -> String,
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> Result<(), ClientError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let targets = parse_targets(hosts)?;
    // Ask all hosts at once; awaiting the handles in order keeps the output order.
    let handles: Vec<_> = targets
        .into_iter()
        .map(|t| tokio::spawn(async move { (t.name.clone(), t.list::<T>(segments).await) }))
        .collect();
    let mut rows: Vec<(String, T)> = Vec::new();
    let mut failures = Vec::new();
    let mut answered = 0usize;
    for handle in handles {
        let (host, result) = handle.await.expect("list fetch task panicked");
        match result {
            Ok(mut items) => {
                answered += 1;
                items.sort_by_key(|i| key(i));
                rows.extend(items.into_iter().map(|i| (host.clone(), i)));
            }
            Err(e) => failures.push(e),
        }
    }
    if hosts.len() == 1 {
        if let Some(e) = failures.pop() {
            return Err(e);
        }
    }
    for failure in &failures {
        report(err, failure);
    }
    write_all(out, render(&rows, hosts.len() > 1).as_bytes())?;
    if answered == 0 {
        return Err(ClientError::NoneReachable {
            hosts: hosts.to_vec(),
        });
    }
    match failures
        .into_iter()
        .find(|f| !matches!(f, ClientError::Unreachable { .. }))
    {
        Some(other) => Err(other),
        None => Ok(()),
    }
}

/// The volumes table: name, policy, state, size, users, path; HOST for several hosts.
fn render_volumes(rows: &[(String, VolumeStatus)], with_host: bool) -> String {
    let mut header = vec!["NAME", "POLICY", "STATE", "SIZE", "USED-BY", "PATH"];
    if with_host {
        header.insert(0, "HOST");
    }
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for (host, v) in rows {
        let state = if v.declared || v.state != "ready" {
            v.state.clone()
        } else {
            format!("{} (undeclared)", v.state)
        };
        let mut line = vec![
            v.name.clone(),
            format!("{:?}", v.reclaim_policy),
            state,
            crate::images::progress::human_bytes(v.size),
            if v.used_by.is_empty() {
                "-".to_owned()
            } else {
                v.used_by.join(",")
            },
            v.path.clone(),
        ];
        if with_host {
            line.insert(0, host.clone());
        }
        lines.push(line);
    }
    crate::table::aligned(&lines, 3)
}

/// The status table: aligned columns, a HOST column only for several hosts.
fn render_table(
    rows: &[(String, ContainerStatus)],
    with_host: bool,
    now: OffsetDateTime,
) -> String {
    let mut header = vec![
        "NAME",
        "STATE",
        "PID",
        "IMAGE",
        "RESTARTS",
        "EXIT-CODE",
        "AGE",
        "MESSAGE",
    ];
    if with_host {
        header.insert(0, "HOST");
    }
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for (host, c) in rows {
        let mut line = vec![
            c.name.clone(),
            // As `docker ps` says it: "running (healthy)".
            match c.health {
                Some(h) => format!("{} ({h})", c.state),
                None => c.state.to_string(),
            },
            c.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            c.image.clone(),
            c.restart_count.to_string(),
            c.exit_code
                .map_or_else(|| "-".to_owned(), |e| e.to_string()),
            age(c.started_at.as_deref(), now),
            truncate(c.message.as_deref().unwrap_or(""), MESSAGE_WIDTH),
        ];
        if with_host {
            line.insert(0, host.clone());
        }
        lines.push(line);
    }
    crate::table::aligned(&lines, 3)
}

/// Time since `started_at`, short like `kubectl get`'s AGE: 45s, 12m, 5h, 3d.
fn age(started_at: Option<&str>, now: OffsetDateTime) -> String {
    let Some(started) = started_at.and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok()) else {
        return "-".to_owned();
    };
    let secs = (now - started).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// One line of at most `max` characters; a cut ends with `…`.
fn truncate(message: &str, max: usize) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `wharf logs`: the log of `name` from the first host that has it.
pub async fn logs(hosts: &[String], name: &str, options: LogOptions) -> Result<(), ClientError> {
    let result = logs_to(hosts, name, options, &mut io::stdout(), &mut io::stderr()).await;
    match result {
        // `wharf logs web | head` closing the pipe is a normal end, not a failure.
        Err(ClientError::Output { source }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// What `wharf logs` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    pub follow: bool,
    /// The run before the current one.
    pub previous: bool,
}

/// [`logs`] writing the log to `out` and skipped hosts' failures to `err`.
pub async fn logs_to(
    hosts: &[String],
    name: &str,
    options: LogOptions,
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> Result<(), ClientError> {
    let targets = parse_targets(hosts)?;
    let found = find_first(&targets, err, |t| {
        let mut url = t.url(&["v1", "containers", name, "logs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(n) = options.tail {
                query.append_pair("tail", &n.to_string());
            }
            if options.follow {
                query.append_pair("follow", "true");
            }
            if options.previous {
                query.append_pair("previous", "true");
            }
        }
        // A followed log has no end; a plain one is bounded like every other request.
        (url, (!options.follow).then_some(REQUEST_TIMEOUT))
    })
    .await;
    let (target, mut response) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(ClientError::NotFound {
                name: name.to_owned(),
                hosts: hosts.to_vec(),
            })
        }
        Err(e) => return Err(e),
    };
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => write_all(out, &bytes)?,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(ClientError::ReadAnswer {
                    host: target.name.clone(),
                    source,
                })
            }
        }
    }
}

/// `wharf inspect`: the container object of `name` as pretty JSON, from the first host
/// that has it. Printed as the agent sent it, so fields newer than this client show too.
pub async fn inspect(hosts: &[String], name: &str) -> Result<(), ClientError> {
    inspect_to(hosts, name, &mut io::stdout(), &mut io::stderr()).await
}

/// [`inspect`] writing the object to `out` and skipped hosts' failures to `err`.
pub async fn inspect_to(
    hosts: &[String],
    name: &str,
    out: &mut impl io::Write,
    err: &mut impl io::Write,
) -> Result<(), ClientError> {
    let targets = parse_targets(hosts)?;
    let found = find_first(&targets, err, |t| {
        (t.url(&["v1", "containers", name]), Some(REQUEST_TIMEOUT))
    })
    .await?;
    let Some((target, response)) = found else {
        return Err(ClientError::NotFound {
            name: name.to_owned(),
            hosts: hosts.to_vec(),
        });
    };
    let object: serde_json::Value =
        response
            .json()
            .await
            .map_err(|source| ClientError::ReadAnswer {
                host: target.name.clone(),
                source,
            })?;
    let mut text = serde_json::to_string_pretty(&object).expect("a JSON value serialises");
    text.push('\n');
    write_all(out, text.as_bytes())
}

/// Asks the hosts in order and returns the first success. `Ok(None)` when every host
/// that answered said 404. With several hosts a failing one is reported on `err` and
/// skipped; if none answered at all the result is unreachable (exit 3).
async fn find_first<'t>(
    targets: &'t [Target],
    err: &mut impl io::Write,
    request: impl Fn(&Target) -> (Url, Option<Duration>),
) -> Result<Option<(&'t Target, reqwest::Response)>, ClientError> {
    let several = targets.len() > 1;
    let mut answered = false;
    let mut first_failure = None;
    for target in targets {
        let (url, timeout) = request(target);
        match target.get(url, timeout).await {
            Ok(Some(response)) => return Ok(Some((target, response))),
            Ok(None) => answered = true,
            Err(e) if !several => return Err(e),
            Err(e) => {
                report(err, &e);
                if !matches!(e, ClientError::Unreachable { .. }) {
                    answered = true;
                    first_failure.get_or_insert(e);
                }
            }
        }
    }
    if !answered {
        return Err(ClientError::NoneReachable {
            hosts: targets.iter().map(|t| t.name.clone()).collect(),
        });
    }
    match first_failure {
        // A host that failed might have had it: say so rather than "not found".
        Some(e) => Err(e),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::status::ContainerState;
    use time::macros::datetime;

    fn container(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            state: ContainerState::Running,
            pid: Some(42),
            image: "127.0.0.1:5099/test/busybox:latest".to_owned(),
            restart_count: 2,
            started_at: Some("2026-11-27T21:00:00Z".to_owned()),
            source: Some("web.yaml".to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_table_shows_policy_state_size_and_users() {
        let v = |name: &str, declared: bool, state: &str, used: &[&str]| VolumeStatus {
            name: name.into(),
            path: format!("/var/lib/wharf/volumes/{name}/data"),
            size: 3 << 20,
            reclaim_policy: crate::manifest::ReclaimPolicy::Delete,
            declared,
            source: None,
            state: state.into(),
            populated: true,
            created_at: None,
            used_by: used.iter().map(|u| u.to_string()).collect(),
            message: None,
        };
        let rows = vec![
            ("h".to_string(), v("data", true, "ready", &["db", "web"])),
            ("h".to_string(), v("old", false, "deleting", &[])),
            ("h".to_string(), v("cache", false, "ready", &[])),
        ];
        let table = render_volumes(&rows, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    POLICY   STATE"), "{table}");
        assert!(
            lines[1].contains("Delete") && lines[1].contains("db,web"),
            "{table}"
        );
        assert!(lines[1].contains("3.1 MB"), "{table}");
        assert!(
            lines[2].contains("deleting") && lines[2].contains(" - "),
            "{table}"
        );
        assert!(lines[3].contains("ready (undeclared)"), "{table}");
    }

    #[test]
    fn table_aligns_columns_and_marks_missing_values() {
        let mut failed = container("db");
        failed.state = ContainerState::Failed;
        failed.pid = None;
        failed.exit_code = Some(1);
        failed.message = Some("pull failed:\nmanifest unknown".to_owned());
        let rows = vec![("h".to_owned(), failed), ("h".to_owned(), container("web"))];
        let table = render_table(&rows, false, datetime!(2026-11-27 21:05:00 UTC));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   STATE     PID   IMAGE                                RESTARTS   EXIT-CODE   AGE   MESSAGE"
        );
        assert_eq!(
            lines[1],
            "db     failed    -     127.0.0.1:5099/test/busybox:latest   2          1           5m    pull failed: manifest unknown"
        );
        assert_eq!(
            lines[2],
            "web    running   42    127.0.0.1:5099/test/busybox:latest   2          -           5m"
        );
    }

    #[test]
    fn table_has_a_host_column_for_several_hosts() {
        let rows = vec![("http://a:1".to_owned(), container("web"))];
        let table = render_table(&rows, true, datetime!(2026-11-27 21:00:30 UTC));
        assert!(table.starts_with("HOST         NAME"), "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("http://a:1   web"),
            "{table}"
        );
    }

    #[test]
    fn age_is_short_and_coarse() {
        let now = datetime!(2026-11-27 21:00:00 UTC);
        assert_eq!(age(Some("2026-11-27T20:59:15Z"), now), "45s");
        assert_eq!(age(Some("2026-11-27T20:48:00Z"), now), "12m");
        assert_eq!(age(Some("2026-11-27T16:00:00Z"), now), "5h");
        assert_eq!(age(Some("2026-11-24T21:00:00Z"), now), "3d");
        assert_eq!(age(None, now), "-");
        assert_eq!(age(Some("yesterday"), now), "-");
    }

    #[test]
    fn long_messages_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("0123456789abc", 10), "012345678…");
    }

    #[test]
    fn hosts_accept_urls_bare_addresses_and_sockets() {
        let t = Target::parse("http://127.0.0.1:7878").unwrap();
        assert_eq!(
            t.url(&["v1", "containers"]).as_str(),
            "http://127.0.0.1:7878/v1/containers"
        );
        let t = Target::parse("127.0.0.1:7878").unwrap();
        assert_eq!(
            t.url(&["healthz"]).as_str(),
            "http://127.0.0.1:7878/healthz"
        );
        let t = Target::parse("http://proxy/wharf/").unwrap();
        assert_eq!(
            t.url(&["v1", "containers", "a b/c"]).as_str(),
            "http://proxy/wharf/v1/containers/a%20b%2Fc"
        );
        assert!(Target::parse("unix:/run/wharf/api.sock").is_ok());
        let e = Target::parse("ftp://x").err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(Target::parse("unix:").err().unwrap().exit_code(), 2);
    }
}
