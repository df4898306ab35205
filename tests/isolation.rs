//! Docker-grade isolation, seen from inside the container: capabilities, no_new_privs,
//! seccomp, masked and read-only paths, devices, the cgroup view; `privileged` lifting
//! it; and the same config run by crun (where installed) giving the same answers.

mod common;

use std::collections::BTreeMap;

use common::runtime::{fixture, request, Cleanup, Fixture};
use wharf::runtime::Runtime;

/// Prints one `key: value` line per property a user or an auditor would check.
/// `$1` is `major minor` of a host block device to try through a fresh node.
const PROBE: &str = r#"
mkdir -p /tmp
for f in CapEff CapBnd CapPrm CapInh NoNewPrivs Seccomp; do grep "^$f:" /proc/self/status | tr -d '\t' | sed 's/:/: /'; done
for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/scsi /sys/firmware /proc/acpi /proc/latency_stats /proc/timer_stats; do
  if [ -e $p ]; then echo "$p: $(head -c 4096 $p 2>/dev/null | wc -c) bytes, $(ls $p 2>/dev/null | wc -l) entries"; fi
done
for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger /sys /sys/fs/cgroup; do
  echo "mount $p: $(grep " $p " /proc/self/mountinfo | cut -d' ' -f6 | cut -c1-2)"
done
echo "dev: $(ls /dev | sort | tr '\n' ' ')"
mknod /tmp/disk b $1 && { head -c 1 /tmp/disk >/dev/null 2>&1 && echo "host disk: readable" || echo "host disk: refused"; }
touch /tmp/owned; chown 1 /tmp/owned 2>/dev/null && echo "chown: allowed" || echo "chown: refused"
if [ -e /sys/fs/cgroup/memory.max ]; then
  echo "cgroup memory: $(cat /sys/fs/cgroup/memory.max)"; echo "cgroup pids: $(cat /sys/fs/cgroup/pids.max)"
else
  echo "cgroup memory: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"; echo "cgroup pids: $(cat /sys/fs/cgroup/pids/pids.max)"
fi
echo "end: probe"
"#;

/// `major minor` of a block device of the host (the first in /sys/block with a node).
fn host_disk() -> (String, String) {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| std::path::Path::new("/dev").join(n).exists())
        .collect();
    names.sort();
    let name = names.first().expect("a block device");
    let dev = std::fs::read_to_string(format!("/sys/block/{name}/dev")).unwrap();
    let (major, minor) = dev.trim().split_once(':').unwrap();
    (major.to_owned(), minor.to_owned())
}

fn parse(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Starts `name` running the probe and returns its answers.
async fn probe(
    f: &Fixture,
    name: &str,
    edit: impl FnOnce(&mut wharf::runtime::StartRequest),
) -> BTreeMap<String, String> {
    let (major, minor) = host_disk();
    let mut req = request(
        f,
        name,
        &["sh", "-c", PROBE, "probe", &format!("{major} {minor}")],
    );
    req.process.cwd = "/".into();
    req.limits = wharf::runtime::Limits {
        memory: Some(32 << 20),
        pids: Some(64),
        ..Default::default()
    };
    edit(&mut req);
    f.rt.start(req).await.expect("start the probe");
    parse(&f.wait_log(name, "end: probe"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_profile_is_dockers_and_crun_agrees_on_the_same_config() {
    if !common::privileged("isolation_default") {
        return;
    }
    let f = fixture();
    let name = "probe";
    let _c = Cleanup(&f.rt, name);
    let got = probe(&f, name, |_| {}).await;
    let expect = [
        ("CapEff", "00000000a80425fb"),
        ("CapBnd", "00000000a80425fb"),
        ("CapInh", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("mount /proc/sys", "ro"),
        ("mount /proc/bus", "ro"),
        ("mount /sys", "ro"),
        ("mount /sys/fs/cgroup", "ro"),
        (
            "dev",
            "core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero",
        ),
        // CAP_MKNOD makes the node; the device cgroup refuses to open it.
        ("host disk", "refused"),
        ("chown", "allowed"),
        // The container's own cgroup, through its cgroup namespace.
        ("cgroup memory", "33554432"),
        ("cgroup pids", "64"),
    ];
    for (k, v) in expect {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}: {got:#?}");
    }
    // Masked as Docker masks, where the kernel has them: files read as /dev/null,
    // folders as an empty tmpfs; read-only paths remounted read-only.
    for (path, masked) in [
        ("/proc/kcore", "0 bytes, 1 entries"),
        ("/proc/keys", "0 bytes, 1 entries"),
        ("/proc/timer_list", "0 bytes, 1 entries"),
        ("/sys/firmware", "0 bytes, 0 entries"),
    ] {
        if std::path::Path::new(path).exists() {
            assert_eq!(got[path], masked, "{path}");
        }
    }
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        assert_eq!(got["mount /proc/sysrq-trigger"], "ro");
    }

    // crun runs the config wharf wrote, on the same layer: same answers (but seccomp,
    // which wharf installs itself rather than through the config).
    if !common::have("crun") {
        assert!(
            !common::required(),
            "crun is missing (apt-get install crun)"
        );
        eprintln!("SKIP the crun comparison: crun is not installed");
        return;
    }
    let config = f._tmp.path().join("state/containers/probe/config.json");
    let theirs = common::crun::run(&config, &f.layer, "wharf-isolation-probe");
    let theirs = parse(&theirs);
    for (k, v) in &got {
        // crun 1.8 leaves the tmpfs holding the v1 hierarchies writable, where runc (and
        // so Docker) and wharf make it read-only as the config asks; the hierarchies
        // themselves are read-only in both (the cgroup values are compared).
        if k == "Seccomp" || k == "mount /sys/fs/cgroup" {
            continue;
        }
        assert_eq!(theirs.get(k), Some(v), "crun differs on {k}: {theirs:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_all_cannot_chown_and_privileged_lifts_every_restriction() {
    if !common::privileged("isolation_privileged") {
        return;
    }
    let f = fixture();
    let name = "dropall";
    let _c = Cleanup(&f.rt, name);
    let got = probe(&f, name, |r| {
        r.capabilities = wharf::runtime::process::resolve_capabilities(&[], &["ALL".into()]);
    })
    .await;
    assert_eq!(got["CapEff"], "0000000000000000");
    assert_eq!(got["chown"], "refused");
    f.rt.remove(name).await.unwrap();

    let name = "privileged";
    let _c2 = Cleanup(&f.rt, name);
    let got = probe(&f, name, |r| {
        r.privileged = true;
        r.capabilities = wharf::runtime::process::resolve_capabilities(&["ALL".into()], &[]);
    })
    .await;
    let mine = std::fs::read_to_string("/proc/self/status").unwrap();
    let my_bnd = mine
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .unwrap();
    assert_eq!(got["CapEff"], my_bnd, "every capability the host has");
    assert_eq!(got["NoNewPrivs"], "0");
    assert_eq!(got["Seccomp"], "0");
    for path in ["/proc/keys", "/proc/kcore"] {
        if std::path::Path::new(path).exists() {
            assert_ne!(got[path], "0 bytes, 1 entries", "{path} not masked");
        }
    }
    assert_eq!(got["mount /sys"], "rw");
    assert_eq!(got["mount /sys/fs/cgroup"], "rw");
    assert_eq!(got["host disk"], "readable");
    let disk = std::fs::read_dir("/sys/block")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| std::path::Path::new("/dev").join(n).exists())
        .unwrap();
    assert!(got["dev"].split(' ').any(|d| d == disk), "{}", got["dev"]);
    assert_eq!(got["cgroup memory"], "33554432", "limits still apply");
}

/// Removes a test cgroup folder (once its processes are gone).
struct CgroupDir(std::path::PathBuf);
impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn device_rules_on_cgroup_v2_are_enforced_by_the_kernel_through_ebpf() {
    if !common::privileged("device_bpf") {
        return;
    }
    use wharf::runtime::linux::cgroups::DeviceRule;
    // A cgroup2 hierarchy: the host's (v2), or the unified one of a v1 hybrid host, where
    // a device program applies just the same.
    let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|r| {
            std::path::Path::new(r).join("cgroup.procs").exists()
                && std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .any(|l| l.split(' ').nth(4) == Some(r) && l.contains(" - cgroup2 "))
        })
        .expect("a cgroup2 hierarchy (v2, or the unified one of a hybrid host)");
    let dir =
        CgroupDir(std::path::Path::new(root).join(format!("wharf-devtest-{}", std::process::id())));
    std::fs::create_dir(&dir.0).unwrap();
    let rule = |allow, typ, major, minor, access: &str| DeviceRule {
        allow,
        typ,
        major,
        minor,
        access: access.into(),
    };
    let rules = [
        rule(false, 'a', None, None, "rwm"),
        rule(true, 'c', None, None, "m"),
        rule(true, 'b', None, None, "m"),
        rule(true, 'c', Some(1), Some(3), "rwm"),
        rule(true, 'c', Some(1), Some(5), "rwm"),
    ];
    wharf::runtime::linux::attach_device_program(
        &dir.0,
        &wharf::runtime::linux::devices_bpf::program(&rules),
    )
    .unwrap();
    let (major, minor) = host_disk();
    let script = format!(
        "echo $$ > {}/cgroup.procs
         echo \"zero: $(head -c 3 /dev/zero | wc -c)\"
         head -c 1 /dev/urandom >/dev/null 2>&1; echo \"urandom: $?\"
         mknod /tmp/wharf-devtest-disk-$$ b {major} {minor} && echo mknod: ok
         head -c 1 /tmp/wharf-devtest-disk-$$ >/dev/null 2>&1; echo \"disk: $?\"
         rm -f /tmp/wharf-devtest-disk-$$",
        dir.0.display()
    );
    let out = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let got = parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(got.get("zero").map(String::as_str), Some("3"), "{got:?}");
    assert_eq!(got["urandom"], "1", "not in the rules: refused");
    assert_eq!(got["mknod"], "ok", "making a node is allowed");
    assert_eq!(got["disk"], "1", "opening a host disk is refused");
}
