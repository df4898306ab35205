//! Registry credentials from the Docker client's config file, so `docker login` (or a
//! hand-written `config.json`) works for wharf too.
//!
//! Where Docker looks (docker/cli `cli/config/config.go`): `$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`. Per registry, in Docker's order of precedence:
//!
//! 1. `credHelpers[host]`: run `docker-credential-<name> get` (server URL on stdin, JSON
//!    `{"Username": …, "Secret": …}` on stdout), as the credential-helper protocol says
//!    (docker/docker-credential-helpers `client/client.go`);
//! 2. `credsStore`: the same helper protocol for every registry;
//! 3. `auths[key]`: base64 `auth` (`user:password`) or plain `username`/`password`.
//!
//! Keys are matched by host name, so `https://host/v1/`, `http://host` and `host` are the
//! same registry, and Docker Hub is known by all of `docker.io`, `index.docker.io`,
//! `registry-1.docker.io` and Docker's historical key `https://index.docker.io/v1/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::ImageError;

/// The key and helper argument Docker uses for Docker Hub.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// Credentials to present to one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: anonymous access (or an anonymous bearer token).
    Anonymous,
    /// A user name and password (or token), used for HTTP basic auth or to ask the
    /// registry's token service for a bearer token.
    Basic { username: String, password: String },
}

// Hand-written so a password never lands in a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    pub(crate) fn to_registry_auth(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Self::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// The parts of Docker's `config.json` that concern registries. Unknown fields (there
/// are many: `proxies`, `psFormat`, …) are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Where to get the credentials for one registry, decided without side effects.
#[derive(Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// Ask `docker-credential-<helper> get` for `server`, falling back to `stored`
    /// when the helper knows nothing.
    Helper {
        helper: String,
        server: String,
        stored: Credentials,
    },
    /// Credentials written in the file itself (or none).
    Stored(Credentials),
}

/// The Docker config file to read: `explicit` if given, else `$DOCKER_CONFIG/config.json`,
/// else `$HOME/.docker/config.json`. `None` when there is no home to look in.
pub fn docker_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The host a config key or registry name refers to: scheme and path dropped, Docker
/// Hub's aliases folded into `docker.io` (docker/cli `ConvertToHostname` plus the Hub
/// special case of `registry.ResolveAuthConfig`).
pub fn canonical_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

impl DockerConfig {
    /// Parses the JSON of a Docker config file.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Where the credentials for `registry` (a host, `host:port`, or a key-like URL) come
    /// from. Pure: no helper is run.
    pub fn source_for(&self, registry: &str) -> Result<CredentialSource, String> {
        let host = canonical_host(registry);
        let stored = self.stored_for(&host)?;
        let helper = find_by_host(&self.cred_helpers, &host)
            .cloned()
            .or_else(|| self.creds_store.clone().filter(|s| !s.is_empty()));
        Ok(match helper {
            Some(helper) => CredentialSource::Helper {
                helper,
                // Helpers store Docker Hub under Docker's historical URL, others by host.
                server: if host == "docker.io" {
                    DOCKER_HUB_SERVER.to_string()
                } else {
                    host
                },
                stored,
            },
            None => CredentialSource::Stored(stored),
        })
    }

    fn stored_for(&self, host: &str) -> Result<Credentials, String> {
        let Some(entry) = find_by_host(&self.auths, host) else {
            return Ok(Credentials::Anonymous);
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("auths entry for {host}: `auth` is not base64: {e}"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| format!("auths entry for {host}: `auth` is not UTF-8"))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                format!("auths entry for {host}: `auth` does not decode to user:password")
            })?;
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Credentials::Basic {
                username: u.clone(),
                password: p.clone(),
            }),
            // `{}`: what Docker leaves in `auths` when a credsStore holds the secret.
            _ => Ok(Credentials::Anonymous),
        }
    }
}

/// The value whose key names `host`; an exact key wins over an equivalent spelling.
fn find_by_host<'a, V>(map: &'a HashMap<String, V>, host: &str) -> Option<&'a V> {
    map.get(host).or_else(|| {
        // Several spellings of one host: pick deterministically (sorted keys).
        let mut keys: Vec<&String> = map.keys().filter(|k| canonical_host(k) == host).collect();
        keys.sort();
        keys.first().and_then(|k| map.get(*k))
    })
}

/// What a credential helper prints for `get`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperOutput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// Parses a helper's `get` output.
fn parse_helper_output(stdout: &[u8]) -> Result<Credentials, String> {
    let out: HelperOutput = serde_json::from_slice(stdout)
        .map_err(|e| format!("credential helper output is not the expected JSON: {e}"))?;
    if out.secret.is_empty() {
        return Ok(Credentials::Anonymous);
    }
    Ok(Credentials::Basic {
        username: out.username,
        password: out.secret,
    })
}

/// The helper program to run: `dir/docker-credential-<helper>` if `dir` has it, else
/// the bare name, which `$PATH` resolves (Docker's only lookup).
fn helper_program(helper: &str, dir: Option<&Path>) -> PathBuf {
    let name = format!("docker-credential-{helper}");
    match dir.map(|d| d.join(&name)) {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(name),
    }
}

/// Runs `docker-credential-<helper> get` for `server` (looked up in `dir`, then
/// `$PATH`). `Ok(None)` when the helper knows no credentials for it (it says so on
/// stdout with a non-zero exit).
async fn run_helper(
    helper: &str,
    server: &str,
    dir: Option<&Path>,
) -> Result<Option<Credentials>, String> {
    use tokio::io::AsyncWriteExt;
    // The name is a suffix, never a path (which would escape `dir` and `$PATH`).
    if helper.is_empty() || helper.contains('/') {
        return Err(format!("invalid credential helper name {helper:?}"));
    }
    let path = helper_program(helper, dir);
    let program = path.display().to_string();
    let mut child = tokio::process::Command::new(&path)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| format!("write to {program}: {e}"))?;
    }
    // A helper may prompt a keychain or hang; never let it block a pull forever.
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| format!("{program} get did not answer within 30s"))?
        .map_err(|e| format!("run {program}: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // The protocol's "not found" message (credentials.ErrCredentialsNotFound).
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(format!(
            "{program} get failed ({}): {msg} {err}",
            out.status
        ));
    }
    parse_helper_output(&out.stdout).map(Some)
}

/// The credentials for `registry`, read from the Docker config at `config_path`
/// (see [`docker_config_path`]); credential helpers are looked up in `helper_dir`
/// first, then `$PATH`. A missing file means anonymous access; an unreadable or
/// malformed file is an error, since silently pulling anonymously would hide it.
pub async fn credentials_for(
    registry: &str,
    config_path: Option<&Path>,
    helper_dir: Option<&Path>,
) -> Result<Credentials, ImageError> {
    let Some(path) = config_path else {
        return Ok(Credentials::Anonymous);
    };
    let fail = |reason: String| ImageError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(e) => return Err(fail(e.to_string())),
    };
    let config = DockerConfig::parse(&bytes).map_err(&fail)?;
    match config.source_for(registry).map_err(&fail)? {
        CredentialSource::Stored(c) => Ok(c),
        CredentialSource::Helper {
            helper,
            server,
            stored,
        } => match run_helper(&helper, &server, helper_dir).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Ok(stored),
            // Docker fails here too; a wrong helper is a configuration error to report.
            Err(reason) => Err(fail(reason)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn base64_auth_entry_gives_user_and_password() {
        let json = format!(
            r#"{{"auths":{{"reg.example:5000":{{"auth":"{}"}}}}}}"#,
            b64("u:p:x")
        );
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        // The password may itself hold a colon; only the first one separates.
        assert_eq!(
            c.source_for("reg.example:5000").unwrap(),
            CredentialSource::Stored(basic("u", "p:x"))
        );
        assert_eq!(
            c.source_for("other.example").unwrap(),
            CredentialSource::Stored(Credentials::Anonymous)
        );
    }

    #[test]
    fn url_style_keys_match_by_host() {
        let json = format!(
            r#"{{"auths":{{"https://reg.example/v1/":{{"auth":"{}"}},"http://plain.example":{{"username":"a","password":"b"}}}}}}"#,
            b64("u:p")
        );
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            c.source_for("reg.example").unwrap(),
            CredentialSource::Stored(basic("u", "p"))
        );
        assert_eq!(
            c.source_for("plain.example").unwrap(),
            CredentialSource::Stored(basic("a", "b"))
        );
    }

    #[test]
    fn docker_hub_is_found_under_its_historical_key_and_aliases() {
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("hub:pw")
        );
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        for name in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                c.source_for(name).unwrap(),
                CredentialSource::Stored(basic("hub", "pw")),
                "{name}"
            );
        }
        let json = format!(r#"{{"auths":{{"docker.io":{{"auth":"{}"}}}}}}"#, b64("a:b"));
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            c.source_for("index.docker.io").unwrap(),
            CredentialSource::Stored(basic("a", "b"))
        );
    }

    #[test]
    fn cred_helper_for_the_host_wins_over_creds_store_and_auths() {
        let json = format!(
            r#"{{"auths":{{"gcr.io":{{"auth":"{}"}},"docker.io":{{}}}},
                "credHelpers":{{"gcr.io":"gcloud"}},"credsStore":"pass"}}"#,
            b64("u:p")
        );
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(
            c.source_for("gcr.io").unwrap(),
            CredentialSource::Helper {
                helper: "gcloud".into(),
                server: "gcr.io".into(),
                stored: basic("u", "p"),
            }
        );
        assert_eq!(
            c.source_for("docker.io").unwrap(),
            CredentialSource::Helper {
                helper: "pass".into(),
                server: DOCKER_HUB_SERVER.into(),
                stored: Credentials::Anonymous,
            }
        );
    }

    #[test]
    fn malformed_auth_is_an_error_naming_the_registry() {
        let c = DockerConfig::parse(br#"{"auths":{"r.example":{"auth":"!!!"}}}"#).unwrap();
        let err = c.source_for("r.example").unwrap_err();
        assert!(err.contains("r.example"), "{err}");
        let json = format!(
            r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#,
            b64("nocolon")
        );
        let c = DockerConfig::parse(json.as_bytes()).unwrap();
        assert!(c.source_for("r.example").is_err());
        assert!(DockerConfig::parse(b"{not json").is_err());
    }

    #[test]
    fn unknown_fields_and_empty_file_are_fine() {
        let c = DockerConfig::parse(br#"{"psFormat":"x","proxies":{}}"#).unwrap();
        assert_eq!(
            c.source_for("docker.io").unwrap(),
            CredentialSource::Stored(Credentials::Anonymous)
        );
    }

    #[test]
    fn helper_output_is_parsed_and_empty_secret_means_anonymous() {
        assert_eq!(
            parse_helper_output(br#"{"ServerURL":"r","Username":"u","Secret":"s"}"#).unwrap(),
            basic("u", "s")
        );
        assert_eq!(
            parse_helper_output(br#"{"Username":"","Secret":""}"#).unwrap(),
            Credentials::Anonymous
        );
        assert!(parse_helper_output(b"oops").is_err());
    }

    #[test]
    fn helpers_are_looked_up_in_the_helper_dir_first_then_path() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("docker-credential-mine");
        std::fs::write(&mine, "").unwrap();
        assert_eq!(helper_program("mine", Some(dir.path())), mine);
        assert_eq!(
            helper_program("other", Some(dir.path())),
            PathBuf::from("docker-credential-other")
        );
        assert_eq!(
            helper_program("mine", None),
            PathBuf::from("docker-credential-mine")
        );
    }

    #[test]
    fn explicit_config_path_wins() {
        let p = Path::new("/tmp/x/config.json");
        assert_eq!(docker_config_path(Some(p)), Some(p.to_path_buf()));
    }

    #[tokio::test]
    async fn missing_file_is_anonymous_and_helper_is_run() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        assert_eq!(
            credentials_for("r.example", Some(&missing), None)
                .await
                .unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            credentials_for("r.example", None, None).await.unwrap(),
            Credentials::Anonymous
        );
        // A helper that is not installed is a configuration error, reported with the file.
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"credHelpers":{"r.example":"wharf-test-no-such-helper"}}"#,
        )
        .unwrap();
        let err = credentials_for("r.example", Some(&cfg), None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("docker-credential-wharf-test-no-such-helper"),
            "{err}"
        );
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
