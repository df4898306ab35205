//! The registry fixture (`scripts/test-registry.sh`) and the independent tools the
//! image tests check wharf against.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// `HOST:PORT` of the fixture registry.
pub fn registry() -> String {
    std::env::var("WHARF_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5099".to_string())
}

/// Skips `test` with a printed reason, unless CI requires the real test to run.
pub fn skip(test: &str, reason: &str) {
    if super::required() {
        panic!("{test}: cannot run: {reason}, and WHARF_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// Why the registry cannot be reached, if it cannot.
pub fn registry_unreachable() -> Option<String> {
    let addr = registry();
    let sock = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(sock)) => sock,
        _ => return Some(format!("{addr} does not resolve")),
    };
    TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .err()
        .map(|e| {
            format!(
                "registry {addr} unreachable ({e}); start it with scripts/test-registry.sh start"
            )
        })
}

/// Why the fixture registry or one of `tools` cannot be used, if it cannot.
pub fn unavailable(tools: &[&str]) -> Option<String> {
    if let Some(reason) = registry_unreachable() {
        return Some(reason);
    }
    tools.iter().find_map(|tool| {
        let found = Command::new(tool).arg("--version").output();
        (!found.is_ok_and(|o| o.status.success()))
            .then(|| format!("{tool} is not installed (apt-get install {tool})"))
    })
}

/// Runs skopeo; its stdout, or its stderr as the error.
pub fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| format!("skopeo: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The manifest or index bytes the registry serves for `reference`.
pub fn skopeo_raw(reference: &str) -> Result<Vec<u8>, String> {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
}

/// `sha256:<hex>` of `bytes`: a manifest's digest is the hash of its raw bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
