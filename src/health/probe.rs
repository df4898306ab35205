//! One health probe of a running container, bounded in time and in what it reads.
//!
//! - `exec` runs CMD in the container through the agent's `wharf prober`
//!   ([`super::prober_process`]), confined exactly as `wharf exec` confines it
//!   (`runtime::exec`), its stdout and stderr captured; exit 0 is healthy.
//! - `tcp` and `http` connect from the agent to `127.0.0.1:PORT` *inside the
//!   container's network namespace*: the socket is made by a short-lived thread that
//!   joined that namespace (through a pidfd of the container's init, so a reused pid
//!   cannot redirect it), then used from the agent's reactor. Never through the host's
//!   network: a port published nowhere, or bound only to the container's loopback, is
//!   probed all the same. `tcp`: the connection is accepted. `http`: `GET PATH`, and a
//!   status from 200 to 399 is healthy (kubelet's rule).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest::Probe;

/// At most this much of a probe's output is kept (Docker's limit).
pub const MAX_OUTPUT: usize = 4096;

/// The container a probe targets.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Its init, as the runtime recorded it.
    pub pid: i32,
    pub start_time: u64,
}

/// How an `exec` probe reaches the container: the agent's `wharf prober`.
#[derive(Debug, Clone)]
pub struct ExecVia(pub std::sync::Arc<super::prober::Prober>);

impl ExecVia {
    /// Probes run by the wharf binary `wharf` on these roots.
    pub fn new(wharf: PathBuf, state_root: PathBuf, run_root: PathBuf) -> Self {
        ExecVia(std::sync::Arc::new(super::prober::Prober::new(
            wharf, state_root, run_root,
        )))
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub healthy: bool,
    /// `exec`: the command's exit status.
    pub exit_code: Option<i32>,
    /// `http`: the response's status.
    pub status: Option<u16>,
    /// The command's output or the response's start (at most [`MAX_OUTPUT`] bytes), or
    /// why the probe failed.
    pub output: String,
}

impl Outcome {
    fn failed(output: impl Into<String>) -> Self {
        Outcome {
            healthy: false,
            exit_code: None,
            status: None,
            output: output.into(),
        }
    }
}

/// Runs `probe` against `target`, for at most `timeout`.
pub async fn run(probe: &Probe, target: &Target, via: &ExecVia, timeout: Duration) -> Outcome {
    let work = async {
        match probe {
            Probe::Exec(cmd) => exec(cmd, target, via, timeout).await,
            Probe::Tcp { port } => match connect(target, *port).await {
                Ok(_) => Outcome {
                    healthy: true,
                    exit_code: None,
                    status: None,
                    output: String::new(),
                },
                Err(e) => Outcome::failed(format!("connect to port {port}: {e}")),
            },
            Probe::Http { port, path } => http(target, *port, path).await,
        }
    };
    // Dropping the work on a timeout kills an exec helper (`kill_on_drop`), whose
    // command dies with it (its parent-death signal), and closes a socket.
    match tokio::time::timeout(timeout, work).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::failed(format!(
            "timed out after {}",
            crate::units::format_duration(timeout)
        )),
    }
}

async fn exec(cmd: &[String], target: &Target, via: &ExecVia, timeout: Duration) -> Outcome {
    let r = via.0.exec(&target.name, cmd, timeout).await;
    if r.timed_out {
        return Outcome::failed(format!(
            "timed out after {}",
            crate::units::format_duration(timeout)
        ));
    }
    Outcome {
        healthy: r.code == Some(0),
        exit_code: r.code,
        status: None,
        output: r.output,
    }
}

/// A TCP connection to `127.0.0.1:port` in the target's network namespace.
async fn connect(target: &Target, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = socket_in_netns(target).await?;
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// A TCP socket made inside the target's network namespace.
async fn socket_in_netns(target: &Target) -> std::io::Result<tokio::net::TcpSocket> {
    let (pid, start_time) = (target.pid, target.start_time);
    // A thread of its own joins the namespace (a network namespace is per thread) and
    // ends with the socket made: no thread of the agent is ever left inside.
    let made = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
            let init = crate::runtime::linux::pidfd_open(pid)?;
            if !crate::runtime::linux::proc::is_alive(pid, start_time) {
                return Err(std::io::Error::other("the container's init is gone"));
            }
            nix::sched::setns(&init, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let fd = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC
                    | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(std::io::Error::from)?;
            Ok(std::net::TcpStream::from(fd))
        })
        .join()
        .map_err(|_| std::io::Error::other("probe thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(tokio::net::TcpSocket::from_std_stream(made))
}

async fn http(target: &Target, port: u16, path: &str) -> Outcome {
    let mut stream = match connect(target, port).await {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("connect to port {port}: {e}")),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: wharf-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::failed(format!("send the request: {e}"));
    }
    // Until the response ends (its Content-Length, or the server closing: the request
    // asked it to), at most MAX_OUTPUT bytes, all within the probe's timeout, as
    // kubelet reads at most a bounded body.
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while response.len() < MAX_OUTPUT {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n.min(MAX_OUTPUT - response.len())]),
            Err(e) if response.is_empty() => {
                return Outcome::failed(format!("read the response: {e}"))
            }
            Err(_) => break,
        }
        if complete(&response) {
            break;
        }
    }
    match parse_status(&response) {
        Some(status) => Outcome {
            healthy: (200..400).contains(&status),
            exit_code: None,
            status: Some(status),
            output: body_start(&response),
        },
        None => Outcome::failed(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        )),
    }
}

/// Whether `response` holds its headers and the whole body its `Content-Length` says.
fn complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let headers = String::from_utf8_lossy(&response[..end]);
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| response.len() >= end + 4 + len)
}

/// The status of `HTTP/1.x NNN ...`.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// The body's start, as text (what a user reads beside the status).
fn body_start(response: &[u8]) -> String {
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |at| &response[at + 4..]);
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_the_first_line_only() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(
            body_start(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nok\n"),
            "ok\n".to_owned()
        );
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
        ));
        assert!(
            !complete(b"HTTP/1.1 200 OK\r\n\r\nstreaming"),
            "read to the end"
        );
    }
}
