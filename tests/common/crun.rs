//! crun as a reference runtime: runs an OCI config wharf generated, for comparisons.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs the OCI config at `config` with crun, on `rootfs` instead of wharf's overlay, in
/// the foreground; returns its output. crun makes and removes its own cgroup (`/<id>`).
pub fn run(config: &Path, rootfs: &Path, id: &str) -> String {
    let bundle = tempfile::tempdir().unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["linux"]["cgroupsPath"] = format!("/{id}").into();
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    // crun 1.8 refuses a v1 host that also mounts cgroup2 at /sys/fs/cgroup/unified
    // ("hybrid"): it runs in a mount namespace of its own without that mount.
    let script = r#"umount /sys/fs/cgroup/unified 2>/dev/null
crun delete --force "$1" 2>/dev/null
crun run --bundle "$0" "$1"; code=$?
crun delete --force "$1" 2>/dev/null
exit $code"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(bundle.path())
        .arg(id)
        .output()
        .expect("run crun");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "crun run failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
