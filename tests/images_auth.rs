//! Basic (htpasswd) auth against a real registry: Debian's docker-registry, started here
//! on a free loopback port with an htpasswd file, holding a copy of the fixture's
//! `test/busybox` made by skopeo. Credentials come from a Docker config file found
//! through `$DOCKER_CONFIG`, as a user's would.
//!
//! Needs `docker-registry`, `htpasswd` (apache2-utils), `skopeo` and the fixture registry
//! (scripts/test-registry.sh start); skips with a reason when one is missing, unless
//! `WHARF_REQUIRE_PRIVILEGED=1`.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use wharf::images::{ImageError, ImageStore, RegistryConfig};

const USER: &str = "wharf";
const PASSWORD: &str = "s3cret-pw";

fn skip(reason: &str) {
    if std::env::var("WHARF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("cannot run the registry auth test: {reason}");
    }
    eprintln!("skipping registry auth test: {reason}");
}

fn have(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
}

/// The registry process; killed by its PID and reaped when dropped, even on a failed
/// assertion.
struct RegistryProcess(Child);

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn start_registry(dir: &Path, addr: &str) -> Result<RegistryProcess, String> {
    let htpasswd = dir.join("htpasswd");
    run(Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args([USER, PASSWORD]))?;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             auth:\n  htpasswd:\n    realm: wharf-test\n    path: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display(),
            htpasswd.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("docker-registry: {e}"))?;
    let proc = RegistryProcess(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "docker-registry did not listen on {addr} within 10s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(proc)
}

#[tokio::test]
async fn pull_from_htpasswd_registry_with_docker_config_credentials() {
    for bin in ["docker-registry", "htpasswd", "skopeo"] {
        if !have(bin) {
            return skip(&format!(
                "{bin} is not installed (apt-get install docker-registry apache2-utils skopeo)"
            ));
        }
    }
    let fixture = std::env::var("WHARF_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5099".into());
    if TcpStream::connect(&fixture).is_err() {
        return skip(&format!(
            "fixture registry {fixture} unreachable; start it with scripts/test-registry.sh start"
        ));
    }

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _registry = start_registry(dir.path(), &addr).unwrap();
    let reference = format!("{addr}/auth/busybox:latest");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--dest-creds={USER}:{PASSWORD}"))
        .arg(format!("docker://{fixture}/test/busybox:latest"))
        .arg(format!("docker://{reference}")))
    .unwrap();
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("--creds={USER}:{PASSWORD}"))
        .arg(format!("docker://{reference}")))
    .unwrap();
    let want_digest = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));

    let open = |docker_config: Option<&Path>| {
        ImageStore::open_with(
            &dir.path().join("images"),
            RegistryConfig {
                insecure: vec![addr.clone()],
                docker_config: docker_config.map(Path::to_path_buf),
                ..Default::default()
            },
        )
        .unwrap()
    };

    // Without credentials: refused, and the message says where credentials go.
    let none = dir.path().join("absent/config.json");
    let err = open(Some(&none)).pull(&reference).await.unwrap_err();
    assert!(matches!(err, ImageError::RegistryAccess { .. }), "{err}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(err.to_string().contains(&reference), "{err}");

    // With `auths` in $DOCKER_CONFIG/config.json (this binary has this one test, so
    // setting the variable races with nothing).
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    std::env::set_var("DOCKER_CONFIG", &docker_dir);
    let store = open(None);
    let (image, stats) = store.pull_with_stats(&reference).await.unwrap();
    std::env::remove_var("DOCKER_CONFIG");
    assert_eq!(image.digest, want_digest);
    assert!(stats.blobs_fetched >= 2, "{stats:?}");
    assert!(image.layers.iter().any(|l| l.join("bin/busybox").exists()));
}
