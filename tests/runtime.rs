//! The built-in runtime against the real kernel: namespaces, rootfs, cgroup, logs,
//! exit codes, stop and remove. Needs root; uses a busybox layer made from the host's
//! busybox-static, so no registry is involved.

mod common;

use std::time::Duration;

use nix::sys::signal::Signal;
use wharf::runtime::{ObservedState, Runtime, RuntimeError};

use common::runtime::{exited, fixture, request, Cleanup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_in_new_namespaces_with_the_image_rootfs_and_logs() {
    if !common::privileged("container_runs_in_new_namespaces") {
        return;
    }
    let f = fixture();
    let name = "ns";
    let _c = Cleanup(&f.rt, name);
    let req = request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "echo $GREETING from $(hostname) in $(pwd); echo err >&2; exec sleep 60",
        ],
    );
    let running = f.rt.start(req).await.expect("start");
    let pid = running.pid;
    let me = std::process::id() as i32;
    for kind in ["mnt", "pid", "uts", "ipc", "net"] {
        assert_ne!(
            common::ns(pid, kind),
            common::ns(me, kind),
            "{kind} namespace is the host's"
        );
        assert!(!common::ns(pid, kind).is_empty());
    }
    // The rootfs is the image's: busybox is there and the host's /usr is not.
    assert!(std::path::Path::new(&format!("/proc/{pid}/root/bin/busybox")).exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}/root/usr")).exists());
    // The standard mounts, seen through the container's mountinfo: /sys read-only.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mount = |point: &str| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} not mounted:\n{mountinfo}"))
            .to_owned()
    };
    assert!(mount("/").contains(" - overlay "), "{}", mount("/"));
    assert!(
        mount("/sys").split(' ').nth(5).unwrap().starts_with("ro"),
        "{}",
        mount("/sys")
    );
    for point in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
        mount(point);
    }
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::metadata(format!("/proc/{pid}/root/dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    // In its cgroup in every hierarchy (v1), or in the unified one (v2): the init moves
    // itself there (cgroups::join_self).
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1: Vec<&str> = cgroup.lines().filter(|l| !l.starts_with("0::")).collect();
    let lines = if v1.is_empty() {
        cgroup.lines().collect()
    } else {
        v1
    };
    let want = format!("/wharf/{}/{name}", f.instance);
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.ends_with(&want)),
        "{cgroup}"
    );

    let observed = f.rt.list().await.unwrap();
    assert_eq!(observed.len(), 1);
    assert!(matches!(observed[0].state, ObservedState::Running(r) if r.pid == pid));
    assert_eq!(observed[0].meta.as_ref().unwrap().source, "test.yaml");
    let log = common::wait_for(30, "log lines", || {
        let log = std::fs::read_to_string(&observed[0].log_path).ok()?;
        log.contains("err").then_some(log)
    });
    assert!(log.contains("hello from ns-host in /work"), "{log}");

    // `sleep` as pid 1 has no SIGTERM handler, so the grace period ends in SIGKILL.
    f.rt.stop(name, Signal::SIGTERM, Duration::from_millis(300))
        .await
        .unwrap();
    let observed = f.rt.list().await.unwrap();
    match &observed[0].state {
        ObservedState::Exited(e) => assert_eq!((e.exit_code, e.signal), (137, Some(9))),
        other => panic!("expected exited, got {other:?}"),
    }
    f.rt.remove(name).await.unwrap();
    assert!(f.rt.list().await.unwrap().is_empty());
    // Its cgroup and this instance's parent are gone (the shared `wharf` parent goes
    // too when no other agent uses it; not asserted, as tests run in parallel).
    for path in [
        format!("wharf/{}/{name}", f.instance),
        format!("wharf/{}", f.instance),
    ] {
        assert!(
            !std::path::Path::new("/sys/fs/cgroup/memory")
                .join(&path)
                .exists(),
            "{path} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_recorded_and_a_restart_keeps_the_log() {
    if !common::privileged("exit_code_is_recorded") {
        return;
    }
    let f = fixture();
    let name = "exit";
    let _c = Cleanup(&f.rt, name);
    f.rt.start(request(&f, name, &["sh", "-c", "echo run; exit 3"]))
        .await
        .unwrap();
    assert_eq!(f.wait_observed(name, 30, exited).exit_code, 3);
    let mut again = request(&f, name, &["sh", "-c", "echo run; exit 4"]);
    again.fresh = false;
    f.rt.start(again).await.unwrap();
    let o = f.wait_observed(name, 30, |o| {
        exited(o).filter(|e| e.exit_code == 4).map(|_| o.clone())
    });
    assert_eq!(o.restart_count, 1);
    assert_eq!(std::fs::read_to_string(&o.log_path).unwrap(), "run\nrun\n");
    // The instance's last container ended on its own: its shim took the instance's
    // parent cgroups with it (no agent to do it), in every hierarchy.
    let parent = format!("wharf/{}", f.instance);
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&parent))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A privileged init that makes sub-cgroups in its own cgroup and moves into one (as
/// systemd or docker-in-docker do): when it ends, its shim removes the sub-cgroups, then
/// the container's cgroup, in every hierarchy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_containers_sub_cgroups_go_with_it() {
    if !common::privileged("sub_cgroups") {
        return;
    }
    let f = fixture();
    let name = "nested";
    let _c = Cleanup(&f.rt, name);
    // In each hierarchy the container sees (its own cgroup is the root of its view):
    // a child with a grandchild, the init moved into the grandchild. (Not cpuset: a new
    // cpuset cgroup has no CPUs until given some.)
    let script = "for h in /sys/fs/cgroup/*/; do [ -e \"$h/cgroup.procs\" ] || continue; \
                  case $h in *cpuset*) continue;; esac; \
                  mkdir -p \"$h/sub/deeper\" && echo $$ > \"$h/sub/deeper/cgroup.procs\" || exit 9; done; \
                  cat /proc/self/cgroup; exit 0";
    let mut req = request(&f, name, &["sh", "-c", script]);
    req.privileged = true;
    req.capabilities = wharf::runtime::process::resolve_capabilities(&["ALL".into()], &[]);
    f.rt.start(req).await.unwrap();
    let exit = f.wait_observed(name, 30, exited);
    let log =
        std::fs::read_to_string(f.wait_observed(name, 5, |o| Some(o.log_path.clone()))).unwrap();
    assert_eq!(exit.exit_code, 0, "{log}");
    assert!(log.contains("/sub/deeper"), "the init did not move: {log}");
    let own = format!("wharf/{}/{name}", f.instance);
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&own))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A remove issued while the init is dead but its shim is still recording the exit
/// waits for the shim: removing the folder under a shim writing `exit.json` failed with
/// "Directory not empty" (a CI flake). The shim is played by a `sleep` this test owns,
/// so the window stays open as long as the test wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_waits_for_a_shim_still_recording_the_exit() {
    use wharf::runtime::linux::proc;
    use wharf::runtime::records::{ExitRecord, Paths, Running};
    let f = fixture();
    let name = "exiting";
    let paths = Paths::new(
        &f._tmp.path().join("state"),
        &f._tmp.path().join("run"),
        name,
    );
    let mut shim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let mut init = std::process::Command::new("true").spawn().unwrap();
    let init_pid = init.id() as i32;
    init.wait().unwrap();
    let shim_pid = shim.id() as i32;
    let running = Running {
        run: 7,
        pid: init_pid,
        start_time: 1,
        started_at: 0,
        started_at_ms: 0,
        shim_pid,
        shim_start_time: proc::start_time(shim_pid).unwrap(),
    };
    std::fs::create_dir_all(&paths.dir).unwrap();
    std::fs::create_dir_all(&paths.run_dir).unwrap();
    std::fs::write(paths.state(), serde_json::to_vec(&running).unwrap()).unwrap();
    std::fs::write(paths.log(), "bye\n").unwrap();

    let rt = std::sync::Arc::new(f.rt);
    let remove = tokio::spawn({
        let rt = rt.clone();
        async move { rt.remove(name).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waited = !remove.is_finished();
    // The "shim" records the exit (into the folder the old code had already removed)
    // and ends.
    std::fs::create_dir_all(&paths.dir).unwrap();
    let exit = ExitRecord {
        run: 7,
        exit_code: 0,
        signal: None,
        finished_at: 0,
        finished_at_ms: 0,
        error: None,
        oom_killed: false,
        message: None,
    };
    std::fs::write(paths.exit(), serde_json::to_vec(&exit).unwrap()).unwrap();
    shim.kill().unwrap();
    shim.wait().unwrap();
    let removed = remove.await.unwrap();
    assert!(waited, "the remove did not wait for the shim");
    removed.unwrap();
    assert!(!paths.dir.exists() && !paths.run_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_fails_with_dockers_message() {
    if !common::privileged("missing_command_fails") {
        return;
    }
    let f = fixture();
    let name = "nocmd";
    let _c = Cleanup(&f.rt, name);
    let err =
        f.rt.start(request(&f, name, &["no-such-binary"]))
            .await
            .unwrap_err();
    // Permanent: only an edit of the manifest can help.
    match err {
        RuntimeError::Unrunnable(m) => {
            assert!(
                m.contains("\"no-such-binary\": executable file not found in $PATH"),
                "{m}"
            )
        }
        other => panic!("expected Unrunnable, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rootfs_and_user_are_applied() {
    if !common::privileged("read_only_rootfs_and_user") {
        return;
    }
    let f = fixture();
    let name = "ro";
    let _c = Cleanup(&f.rt, name);
    let mut req = request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "id -u; id -g; touch /x 2>/dev/null || echo read-only; echo home=$HOME",
        ],
    );
    req.read_only_rootfs = true;
    req.process.user = "nobody".into();
    req.process.cwd = "/".into();
    f.rt.start(req).await.unwrap();
    let log = f.wait_log(name, "home=");
    assert_eq!(log, "65534\n65534\nread-only\nhome=/nonexistent\n", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linux_runtime_passes_the_conformance_suite() {
    if !common::privileged("conformance") {
        return;
    }
    let f = fixture();
    let _a = Cleanup(&f.rt, "cconf");
    let _b = Cleanup(&f.rt, "cmissing");
    wharf::runtime::testing::conformance(&f.rt, "c", vec![f.layer.clone()]).await;
}

/// Removes a network namespace file however the test ends.
struct NetnsGuard(std::path::PathBuf);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = wharf::net::netns::remove(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_joins_a_prepared_network_namespace_and_gets_its_etc_files() {
    if !common::privileged("joins_prepared_netns") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let name = "joined";
    let _c = Cleanup(&f.rt, name);
    let netns = f._tmp.path().join("run/netns").join(name);
    std::fs::create_dir_all(netns.parent().unwrap()).unwrap();
    wharf::net::netns::create(&netns).unwrap();
    let _n = NetnsGuard(netns.clone());
    // Images often ship /etc/hosts as a symlink; the bind mount must shadow it, never
    // follow it.
    std::os::unix::fs::symlink("/proc/self/mounts", f.layer.join("etc/hosts")).unwrap();

    let mut req = request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "cat /etc/hostname /etc/hosts /etc/resolv.conf; exec sleep 60",
        ],
    );
    req.network = wharf::runtime::NetworkMode::Join(netns.clone());
    req.etc_files = vec![
        ("hostname".into(), "joined\n".into()),
        (
            "hosts".into(),
            "127.0.0.1\tlocalhost\n10.89.0.2\tjoined\n".into(),
        ),
        ("resolv.conf".into(), "nameserver 10.89.0.1\n".into()),
    ];
    let running = f.rt.start(req).await.unwrap();
    let pid = running.pid;
    let inode = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&format!("/proc/{pid}/ns/net")),
        inode(netns.to_str().unwrap()),
        "the container is in the prepared network namespace"
    );
    let log = f.wait_log(name, "nameserver");
    assert_eq!(
        log,
        "joined\n127.0.0.1\tlocalhost\n10.89.0.2\tjoined\nnameserver 10.89.0.1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_dockers_default_set_and_follow_add_and_drop() {
    if !common::privileged("capabilities") {
        return;
    }
    let f = fixture();
    let status = |pid: i32, field: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:\t")).map(str::to_owned))
            .unwrap()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Docker's default set as a mask: what `docker run` shows in CapEff.
    let cases = [
        ("capdefault", "0:0", vec![], vec![], "00000000a80425fb"),
        ("capnonroot", "nobody", vec![], vec![], "0000000000000000"),
        (
            "capnetadmin",
            "0:0",
            s(&["CAP_NET_ADMIN"]),
            s(&["ALL"]),
            "0000000000001000",
        ),
    ];
    for (name, user, add, drop, eff) in cases {
        let _c = Cleanup(&f.rt, name);
        let mut req = request(&f, name, &["sleep", "60"]);
        req.process.user = user.into();
        req.process.cwd = "/".into();
        req.capabilities = wharf::runtime::process::resolve_capabilities(&add, &drop);
        let pid = f.rt.start(req).await.unwrap().pid;
        assert_eq!(status(pid, "CapEff"), eff, "{name}");
        if user == "0:0" {
            assert_eq!(status(pid, "CapBnd"), eff, "{name}: bounding set");
        }
        assert_eq!(status(pid, "CapInh"), "0000000000000000", "{name}");
        f.rt.remove(name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_a_memory_hog_is_oom_killed_and_a_fork_bomb_contained() {
    if !common::privileged("limits") {
        return;
    }
    let f = fixture();

    // Memory: doubling a shell string until the 16 MiB limit stops it.
    let name = "hog";
    let _c = Cleanup(&f.rt, name);
    let mut req = request(
        &f,
        name,
        &["sh", "-c", "a=0123456789; while true; do a=$a$a; done"],
    );
    req.limits = wharf::runtime::Limits {
        memory: Some(16 << 20),
        ..Default::default()
    };
    f.rt.start(req).await.unwrap();
    let exit = f.wait_observed(name, 30, exited);
    assert_eq!((exit.exit_code, exit.oom_killed), (137, true), "{exit:?}");

    // Pids and CPU: the limits are in the container's cgroup; forks beyond the pids
    // limit fail. The bomb runs in a subshell (busybox sh gives up when a fork fails):
    // the init outlives it, so the cgroup stays to be read however slow this host is.
    let name = "bomb";
    let _c = Cleanup(&f.rt, name);
    let mut req = request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "sleep 1; (for i in $(seq 40); do sleep 30 & done); exec sleep 60",
        ],
    );
    req.limits = wharf::runtime::Limits {
        cpus: Some(0.5),
        pids: Some(10),
        ..Default::default()
    };
    f.rt.start(req).await.unwrap();
    let cg = format!("wharf/{}/{name}", f.instance);
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/{cg}/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us").as_deref(), Some("50000"));
    assert_eq!(read("pids", "pids.max").as_deref(), Some("10"));
    let log_path = f._tmp.path().join("state/containers/bomb/container.log");
    let mut most = 0u32;
    // Sampled while the forks fail, so not through `wait_log`.
    common::wait_for(30, "forks refused", || {
        if let Some(n) = read("pids", "pids.current").and_then(|n| n.parse().ok()) {
            most = most.max(n);
        }
        let l = std::fs::read_to_string(&log_path).ok()?;
        l.contains("can't fork").then_some(())
    });
    assert!(most <= 10, "{most} processes in a cgroup limited to 10");
    let list = f.rt.list().await.unwrap();
    let o = list.iter().find(|o| o.name == name).unwrap();
    assert!(
        matches!(o.state, ObservedState::Running(_)),
        "the init outlives the refused forks: {o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_tmpfs_mounts_work_and_a_symlink_in_the_image_stays_inside_the_root() {
    if !common::privileged("mounts") {
        return;
    }
    use wharf::manifest::MountSpec;
    let f = fixture();
    let host = f._tmp.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from the host\n").unwrap();
    let ro = f._tmp.path().join("rodir");
    std::fs::create_dir_all(&ro).unwrap();
    let bind = |source: &std::path::Path, target: &str, read_only| MountSpec::Bind {
        source: source.display().to_string(),
        target: target.into(),
        read_only,
        create_host_path: false,
    };

    let name = "mounts";
    let _c = Cleanup(&f.rt, name);
    let mut req = request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "cat /data/in; echo written > /data/out; touch /ro/x 2>/dev/null || echo ro refused; \
             grep ' /scratch ' /proc/mounts | cut -d' ' -f3,4; echo done",
        ],
    );
    req.mounts = vec![
        bind(&host, "/data", false),
        bind(&ro, "/ro", true),
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size: Some(8 << 20),
            mode: Some(0o750),
        },
    ];
    f.rt.start(req).await.unwrap();
    let log = f.wait_log(name, "done");
    assert!(
        log.starts_with("from the host\nro refused\ntmpfs rw,nosuid,nodev,"),
        "{log}"
    );
    assert!(log.contains("size=8192k"), "{log}");
    assert!(log.contains("mode=750"), "{log}");
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.join("x").exists());

    // A symlink planted in the image where a mount goes is followed inside the root, as
    // under Docker, never out of it: `/escape -> /etc` puts the mount on the container's
    // `/etc/wharf-test`, and the host's `/etc` is untouched.
    std::os::unix::fs::symlink("/etc", f.layer.join("escape")).unwrap();
    let name = "escape";
    let _c2 = Cleanup(&f.rt, name);
    let mut req = request(&f, name, &["sh", "-c", "cat /etc/wharf-test/in; echo done"]);
    req.mounts = vec![bind(&host, "/escape/wharf-test", false)];
    f.rt.start(req).await.unwrap();
    assert_eq!(f.wait_log(name, "done"), "from the host\ndone\n");
    assert!(!std::path::Path::new("/etc/wharf-test").exists());

    // A bind source that does not exist is a clear error, and is not created.
    let mut req = request(&f, "nosource", &["true"]);
    let missing = f._tmp.path().join("missing");
    req.mounts = vec![bind(&missing, "/m", false)];
    let err = f.rt.start(req).await.unwrap_err().to_string();
    assert!(err.contains("does not exist on the host"), "{err}");
    assert!(!missing.exists());
    let _ = f.rt.remove("nosource").await;

    // Unless asked: `createHostPath: true` makes the folder.
    let name = "createsource";
    let _c3 = Cleanup(&f.rt, name);
    let mut req = request(&f, name, &["sh", "-c", "echo made > /m/file; echo done"]);
    req.mounts = vec![MountSpec::Bind {
        source: missing.display().to_string(),
        target: "/m".into(),
        read_only: false,
        create_host_path: true,
    }];
    f.rt.start(req).await.unwrap();
    f.wait_log(name, "done");
    assert_eq!(
        std::fs::read_to_string(missing.join("file")).unwrap(),
        "made\n"
    );
}

/// On a cgroup v2 host the init is born in its cgroup and its pid namespace
/// (`clone3(CLONE_INTO_CGROUP | CLONE_NEWPID)`), and its cgroup namespace is rooted
/// there. On a v1 (hybrid) host like ours the shim is run in a mount namespace where
/// `/sys/fs/cgroup` is the host's unified cgroup2 hierarchy, whose one free controller
/// (hugetlb) cgroups-rs enables at its root: the test turns it off again if it was off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cgroup_v2_the_init_is_born_in_its_cgroup() {
    use std::os::unix::fs::PermissionsExt;
    if !common::privileged("cgroup_v2_birth") {
        return;
    }
    let f = fixture();
    let pure_v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let root = std::path::PathBuf::from(if pure_v2 {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    });
    if !root.join("cgroup.controllers").exists() {
        // A v1-only host (no unified hierarchy): nothing to run the v2 path on.
        assert!(
            !common::required(),
            "no cgroup2 hierarchy at {}",
            root.display()
        );
        eprintln!(
            "SKIP cgroup_v2_birth: no cgroup2 hierarchy at {}",
            root.display()
        );
        return;
    }
    let wharf = std::path::PathBuf::from(env!("CARGO_BIN_EXE_wharf"));
    let shim = if pure_v2 {
        wharf
    } else {
        let script = f._tmp.path().join("shim-on-cgroup2.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec unshare -m --propagation private sh -c \
                 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"' {} \"$@\"\n",
                wharf.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    };
    let _restore = RootControllers::record(&root, &f.instance);
    let rt = wharf::runtime::LinuxRuntime::new(
        &f._tmp.path().join("state"),
        &f._tmp.path().join("run"),
        &f.instance,
        shim,
    );
    let name = "born";
    let _c = Cleanup(&rt, name);
    rt.start(request(
        &f,
        name,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; echo pid=$$; echo done; exec sleep 60",
        ],
    ))
    .await
    .unwrap();
    let log = f.wait_log(name, "done");
    assert!(log.lines().any(|l| l == "0::/"), "cgroup namespace: {log}");
    assert!(log.lines().any(|l| l == "pid=1"), "pid namespace: {log}");
    let observed = rt.list().await.unwrap();
    let Some(ObservedState::Running(r)) =
        observed.iter().find(|o| o.name == name).map(|o| &o.state)
    else {
        panic!("not running: {observed:?}");
    };
    let host_view = std::fs::read_to_string(format!("/proc/{}/cgroup", r.pid)).unwrap();
    let want = format!("0::/wharf/{}/{name}", f.instance);
    assert!(host_view.lines().any(|l| l == want), "{host_view}");
    let dir = root.join(format!("wharf/{}/{name}", f.instance));
    rt.remove(name).await.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Removes this test's cgroup2 parents and turns the root's controllers back to what
/// they were.
struct RootControllers {
    root: std::path::PathBuf,
    instance: String,
    before: String,
}

impl RootControllers {
    fn record(root: &std::path::Path, instance: &str) -> Self {
        RootControllers {
            root: root.to_owned(),
            instance: instance.to_owned(),
            before: std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        }
    }
}

impl Drop for RootControllers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.root.join(format!("wharf/{}", self.instance)));
        let _ = std::fs::remove_dir(self.root.join("wharf"));
        let now = std::fs::read_to_string(self.root.join("cgroup.subtree_control")).unwrap();
        for added in now
            .split_whitespace()
            .filter(|c| !self.before.split_whitespace().any(|b| b == *c))
        {
            let _ = std::fs::write(
                self.root.join("cgroup.subtree_control"),
                format!("-{added}"),
            );
        }
    }
}
