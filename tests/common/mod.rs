//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod agent;
pub mod crun;
pub mod fixture;
pub mod net;
pub mod runtime;

use std::path::{Path, PathBuf};

/// Whether privileged tests must run (CI) rather than skip.
pub fn required() -> bool {
    std::env::var("WHARF_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Returns true when the test can run as root; otherwise prints why it skips, or
/// panics under `WHARF_REQUIRE_PRIVILEGED=1` (a CI run must not skip silently).
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let busybox = Path::new("/bin/busybox").exists();
    let reason = if !root {
        "not running as root"
    } else if !busybox {
        "/bin/busybox is missing (apt-get install busybox-static)"
    } else {
        return true;
    };
    if required() {
        panic!("{test}: {reason}, and WHARF_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// A unique short name for kernel objects and containers of one test.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds a busybox rootfs layer in `dir` from the host's static busybox: the binary,
/// its applet symlinks, and minimal /etc/passwd and /etc/group.
pub fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "cat", "echo", "id", "hostname", "ls", "readlink", "true", "false", "touch",
        "ps", "env", "pwd", "ip", "kill", "trap",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet));
    }
    std::fs::write(
        layer.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(layer.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    layer
}

/// Polls `f` every 20 ms until it returns Some, or panics after `secs` seconds.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The namespace inode link of `pid` (e.g. `mnt:[4026531841]`).
pub fn ns(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether `tool` is on `PATH`; otherwise prints why `test` skips, or panics under
/// `WHARF_REQUIRE_PRIVILEGED=1`.
pub fn have_tool(tool: &str, test: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if required() {
            panic!("{test}: {tool} is not installed, and WHARF_REQUIRE_PRIVILEGED=1");
        }
        eprintln!("SKIP {test}: {tool} is not installed");
    }
    found
}

/// The value of `key:` in a `/proc/PID/status` text (`Uid`, `CapEff`…).
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
