//! Attacks from docs/security.md, performed for real against the runtime: each test is
//! the attack, and passes only if it fails. Needs root.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf::manifest::MountSpec;
use wharf::runtime::Runtime;

use common::agent::{container_yaml, pid_of, Agent};
use common::runtime::{exited, fixture, request, Cleanup};

/// Capability-gated seccomp rules follow the capabilities the container really holds:
/// `chroot` works by default (Docker allows it), and `SYS_ADMIN` added lets `mount`,
/// `unshare` and `sethostname` through (they failed when the shim passed `SYS_CHROOT`
/// where the profile looked for `CAP_SYS_CHROOT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_follows_the_capabilities_chroot_by_default_mount_with_sys_admin() {
    if !common::privileged("seccomp_follows_the_capabilities") {
        return;
    }
    let f = fixture();
    let script = "busybox chroot / /bin/true && echo chroot=ok || echo chroot=refused; \
         busybox mkdir -p /mnt; busybox mount -t tmpfs none /mnt 2>/dev/null \
           && echo mount=ok || echo mount=refused; \
         busybox hostname renamed 2>/dev/null && echo hostname=ok || echo hostname=refused; \
         busybox unshare -U /bin/true 2>/dev/null && echo unshare=ok || echo unshare=refused; \
         echo done";
    let cases = [
        (
            "scdefault",
            vec![],
            "chroot=ok\nmount=refused\nhostname=refused\nunshare=refused\n",
        ),
        (
            "scadmin",
            vec!["CAP_SYS_ADMIN".to_string()],
            "chroot=ok\nmount=ok\nhostname=ok\nunshare=ok\n",
        ),
    ];
    for (name, add, want) in cases {
        let _c = Cleanup(&f.rt, name);
        let mut req = request(&f, name, &["sh", "-c", script]);
        req.process.cwd = "/".into();
        req.capabilities = wharf::runtime::process::resolve_capabilities(&add, &[]);
        f.rt.start(req).await.unwrap();
        let log = f.wait_log(name, "done");
        assert_eq!(log, format!("{want}done\n"), "{name}");
        f.rt.remove(name).await.unwrap();
    }
}

/// The race of issue 9: a directory of a shared folder flips between a real directory
/// and a symlink to a host path, while a container restarts again and again with a tmpfs
/// and a file bind mounted below that directory. Path-based mounting followed the
/// swapped-in link on the host (a host file was truncated, files and folders appeared
/// there); resolved inside the root, nothing outside changes.
///
/// The flipper is a thread of this test exchanging the two names with
/// `renameat2(RENAME_EXCHANGE)` as fast as the kernel allows: what a container sharing
/// the folder can do with any compiled program (a shell loop in busybox forks too slowly
/// to hit the window often enough for a test that must fail on the old code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_into_a_shared_folder_never_moves_a_mount_onto_the_host() {
    if !common::privileged("mount_race") {
        return;
    }
    let f = fixture();
    let shared = f._tmp.path().join("shared");
    let victim = f._tmp.path().join("victim");
    std::fs::create_dir_all(shared.join("sub")).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("f"), "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, shared.join("alt")).unwrap();
    let source = f._tmp.path().join("bound");
    std::fs::write(&source, "bound\n").unwrap();
    let bind = |source: &Path, target: &str| MountSpec::Bind {
        source: source.display().to_string(),
        target: target.into(),
        read_only: false,
        create_host_path: false,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, shared) = (stop.clone(), shared.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &shared.join("sub"),
                    nix::fcntl::AT_FDCWD,
                    &shared.join("alt"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .expect("exchange");
                flips += 1;
            }
            flips
        })
    };

    let racer = "racer";
    let _c = Cleanup(&f.rt, racer);
    let (mut started, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..60 {
        if Instant::now() > deadline {
            break;
        }
        let mut req = request(&f, racer, &["true"]);
        req.process.cwd = "/".into();
        req.mounts = vec![
            bind(&shared, "/vol"),
            MountSpec::Tmpfs {
                target: "/vol/sub/t".into(),
                size: None,
                mode: None,
            },
            bind(&source, "/vol/sub/f"),
        ];
        match f.rt.start(req).await {
            Ok(_) => {
                started += 1;
                f.wait_observed(racer, 30, exited);
            }
            Err(_) => refused += 1,
        }
        let _ = f.rt.remove(racer).await;
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();

    let entries: Vec<String> = std::fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["f"], "the host folder changed");
    assert_eq!(
        std::fs::read_to_string(victim.join("f")).unwrap(),
        "precious\n"
    );
    assert_eq!(std::fs::read_to_string(&source).unwrap(), "bound\n");
    // The race ran both ways: the harness is no proof if every start was refused.
    assert!(
        started > 0,
        "no start succeeded ({refused} refused): the race proves nothing"
    );
    eprintln!("mount race: {started} starts, {refused} refused, {flips} flips");
}

/// CVE-2020-8558's class: `route_localnet` on the bridges (for loopback-published ports)
/// lets frames for 127.0.0.1 in, so a container with `NET_RAW` (Docker's default) could
/// complete TCP handshakes with any loopback-only service of the host. A raw SYN from
/// the container's network namespace to a host listener on 127.0.0.1 gets no answer; the
/// same client against the bridge address is answered (the client works), and a port
/// published on loopback still answers.
#[test]
fn a_container_cannot_reach_a_loopback_only_service_of_the_host_with_raw_frames() {
    if !(common::privileged("martian_loopback")
        && common::agent::registry_up("martian_loopback")
        && common::have_tool("python3", "martian_loopback")
        && common::have_tool("nsenter", "martian_loopback"))
    {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "attacker.yaml",
        &container_yaml("attacker", "exec sleep 1000", ""),
    );
    agent.write(
        "web.yaml",
        &container_yaml(
            "web",
            "while true; do echo pong | nc -l -p 8080; done",
            "  ports: [\"18080:8080\"]\n",
        ),
    );
    let attacker = agent.wait_container("attacker", 60, "running", |c| c["state"] == "running");
    agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&attacker).to_string();
    let ip = attacker["addresses"][0]["ip"].as_str().unwrap().to_owned();

    // Host services in the agent's namespace: one on loopback only, one on every address.
    let bridge = wharf::net::link::bridge_name(&agent.instance(), 0);
    let (loopback, any, mac) = agent.in_netns(|| {
        let out = std::process::Command::new("ip")
            .args(["-j", "link", "show", "dev", &bridge])
            .output()
            .unwrap();
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("0.0.0.0:0").unwrap(),
            links[0]["address"].as_str().unwrap().to_owned(),
        )
    });
    let syn = |dst: &str, port: u16| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-n", "python3"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/scripts/raw_syn.py"
            ))
            .args(["eth0", &ip, &mac, dst, &port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "raw_syn.py: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let gateway = ip
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .unwrap();
    assert_eq!(
        syn(&gateway, any.local_addr().unwrap().port()),
        "answered",
        "the raw client must work for the test to prove anything"
    );
    assert_eq!(
        syn("127.0.0.1", loopback.local_addr().unwrap().port()),
        "silent",
        "a container reached a loopback-only service of the host"
    );
    loopback.set_nonblocking(true).unwrap();
    assert!(loopback.accept().is_err(), "a connection was accepted");

    let answer = common::wait_for(30, "loopback-published port", || {
        agent.in_netns(|| {
            let mut s = TcpStream::connect_timeout(
                &"127.0.0.1:18080".parse().unwrap(),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            (!out.is_empty()).then_some(out)
        })
    });
    assert_eq!(answer, "pong\n");
}

/// The manifest folder cannot stop or fool the agent: a FIFO renamed over a manifest,
/// a file rewritten in place (`cat > f`), and a link to a file outside the folder. The
/// running container is untouched, the errors are reported without the file's content,
/// later manifests are still applied, and `/healthz` stays `ok`. Also: the agent runs
/// with its soft open-files limit raised to the hard one.
#[test]
fn the_manifest_folder_cannot_stop_or_fool_the_agent() {
    if !(common::privileged("manifest_folder") && common::agent::registry_up("manifest_folder")) {
        return;
    }
    let mut agent = Agent::new();
    agent.nofile_soft = Some(1000);
    agent.start();
    let open_files = |pid: u32| -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let words: Vec<String> = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (words[3].clone(), words[4].clone())
    };
    let (soft, hard) = open_files(agent.pid().unwrap());
    assert_eq!(soft, hard, "the agent did not raise its soft limit");

    let web = container_yaml("web", "exec sleep 1000", "");
    agent.write("web.yaml", &web);
    let pid = pid_of(&agent.wait_container("web", 60, "running", |c| c["state"] == "running"));
    // Containers start with the limit the agent was given, not the raised one.
    assert_eq!(open_files(pid as u32).0, "1000");

    // `cat > web.yaml`: truncated, then written 50 ms later, three times.
    let path = agent.manifests.join("web.yaml");
    for _ in 0..3 {
        let f = std::fs::File::create(&path).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(f);
        std::fs::write(&path, &web).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let c = agent.container("web").unwrap();
    assert_eq!(
        (c["state"].as_str(), pid_of(&c)),
        (Some("running"), pid),
        "{c}"
    );

    // A FIFO renamed over the manifest: reported, the container kept, nothing hangs.
    let fifo = agent.tmp.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::rename(&fifo, &path).unwrap();
    // A link to a secret outside the folder: an error that does not quote it.
    let secret = agent.tmp.path().join("secret");
    std::fs::write(&secret, "root:$6$verysecrethash:19000:0:99999:7:::\n").unwrap();
    std::os::unix::fs::symlink(&secret, agent.manifests.join("shadow.yaml")).unwrap();
    let manifests = common::wait_for(30, "both errors reported", || {
        let (_, body) = agent.get("/v1/manifests")?;
        (body.contains("a FIFO") && body.contains("outside the manifests folder")).then_some(body)
    });
    assert!(!manifests.contains("verysecrethash"), "{manifests}");
    // Later manifests are still applied, and the agent says it is healthy.
    agent.write("db.yaml", &container_yaml("db", "exec sleep 1000", ""));
    agent.wait_container("db", 60, "running", |c| c["state"] == "running");
    assert_eq!(agent.get("/healthz").unwrap(), (200, "ok".to_owned()));
    let c = agent.container("web").unwrap();
    assert_eq!(
        (c["state"].as_str(), pid_of(&c)),
        (Some("running"), pid),
        "{c}"
    );
}

/// `kill -9` of a container's shim: the agent notices, stops the container (nothing
/// could log its output or record its exit any more), says so on the container object,
/// and the restart policy applies: under `Always` it runs again, logged; under `Never`
/// it stays exited with the reason.
#[test]
fn a_killed_shim_is_noticed_said_and_recovered_per_policy() {
    if !(common::privileged("killed_shim") && common::agent::registry_up("killed_shim")) {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done";
    agent.write(
        "always.yaml",
        &container_yaml("always", script, "  restartPolicy: Always\n"),
    );
    agent.write(
        "never.yaml",
        &container_yaml("never", script, "  restartPolicy: Never\n"),
    );
    let shim_of = |name: &str| -> i32 {
        let state = agent.run.join("containers").join(name).join("state.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
        v["shimPid"].as_i64().unwrap() as i32
    };
    for name in ["always", "never"] {
        let c = agent.wait_container(name, 60, "running", |c| c["state"] == "running");
        let (pid, shim) = (pid_of(&c), shim_of(name));
        assert!(shim > 0 && common::agent::alive(shim));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        if name == "never" {
            let c = agent.wait_container(name, 30, "the dead shim noticed", |c| {
                c["message"].as_str().is_some_and(|m| m.contains("shim"))
            });
            assert!(!common::agent::alive(pid), "the orphaned init still runs");
            assert_eq!(
                (&c["state"], &c["exitCode"]),
                (&"exited".into(), &137.into()),
                "{c}"
            );
            continue;
        }
        // Always: started again at once (the first restart does not wait), with a
        // shim, its output logged again, and the loss said in its last state.
        let c = agent.wait_container(name, 30, "restarted", |c| {
            c["state"] == "running" && pid_of(c) != pid
        });
        assert!(!common::agent::alive(pid), "the orphaned init still runs");
        let last = &c["lastState"];
        assert_eq!(last["exitCode"], 137, "{c}");
        assert!(
            last["message"].as_str().is_some_and(|m| m.contains("shim")),
            "{c}"
        );
        assert!(common::agent::alive(shim_of(name)));
        let before = agent.get("/v1/containers/always/logs").unwrap().1.len();
        common::wait_for(30, "new output logged", || {
            let now = agent.get("/v1/containers/always/logs")?.1.len();
            (now > before).then_some(())
        });
        assert_eq!(c["restartCount"], 1, "{c}");
    }
}

/// runc's CVE-2025-31133, against wharf: an image whose `/dev` links to a folder the
/// container controls (here a bind at `/data`) holding `null -> core_pattern`. Had the
/// `/dev` tmpfs followed the link, masking would bind "`/dev/null`", that is the host's
/// `core_pattern`, read-write over `/proc/keys` and the rest. The kernel's filesystems
/// are mounted only where no symlink leads, and masks use a checked null device: the
/// start is refused, and a plain container's masks are the null device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_cannot_choose_what_dev_null_is_for_the_masks() {
    if !common::privileged("dev_null_masks") {
        return;
    }
    let f = fixture();
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let evil = f._tmp.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", evil.join("null")).unwrap();

    // A plain container first: its masked /proc/keys is the null device.
    let plain = "plain";
    let _c = Cleanup(&f.rt, plain);
    let mut req = request(&f, plain, &["sleep", "60"]);
    req.process.cwd = "/".into();
    let pid = f.rt.start(req).await.unwrap().pid;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let keys = std::fs::metadata(format!("/proc/{pid}/root/proc/keys")).unwrap();
    assert!(keys.file_type().is_char_device());
    assert_eq!(keys.rdev(), nix::sys::stat::makedev(1, 3));
    f.rt.remove(plain).await.unwrap();

    std::fs::create_dir_all(f.layer.join("data")).unwrap();
    std::os::unix::fs::symlink("/data", f.layer.join("dev")).unwrap();
    let name = "devlink";
    let _c2 = Cleanup(&f.rt, name);
    let mut req = request(&f, name, &["sleep", "60"]);
    req.process.cwd = "/".into();
    req.mounts = vec![MountSpec::Bind {
        source: evil.display().to_string(),
        target: "/data".into(),
        read_only: false,
        create_host_path: false,
    }];
    let err = f.rt.start(req).await.unwrap_err().to_string();
    assert!(err.contains("mount target /dev"), "{err}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );

    // A manifest's own mount on /dev: its `null -> <host file>` must not be given the
    // device nodes' mode (0666) on the host, nor serve as the masks' null device.
    std::fs::remove_file(f.layer.join("dev")).unwrap();
    let host_file = f._tmp.path().join("host-secret");
    std::fs::write(&host_file, "secret").unwrap();
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let devdir = f._tmp.path().join("devdir");
    std::fs::create_dir_all(&devdir).unwrap();
    std::os::unix::fs::symlink(&host_file, devdir.join("null")).unwrap();
    let name = "devmount";
    let _c3 = Cleanup(&f.rt, name);
    let mut req = request(&f, name, &["sleep", "60"]);
    req.process.cwd = "/".into();
    req.mounts = vec![MountSpec::Bind {
        source: devdir.display().to_string(),
        target: "/dev".into(),
        read_only: false,
        create_host_path: false,
    }];
    let err = f.rt.start(req).await.unwrap_err().to_string();
    assert!(err.contains("not the null device"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&host_file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the host file's mode changed");
}
