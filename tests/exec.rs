//! `wharf exec`: a command in a running container is confined exactly as the
//! container's init is, gets its environment, and exits with the command's status.

mod common;

use common::agent::{container_yaml, pid_of, wharf_full, Agent};
use common::status_field;

fn ready(test: &str) -> bool {
    common::privileged(test) && common::agent::registry_up(test)
}

#[test]
fn exec_runs_confined_as_the_container_and_returns_the_commands_status() {
    if !ready("exec") {
        return;
    }
    let mut agent = Agent::new();
    agent.start();
    agent.write(
        "web.yaml",
        &container_yaml(
            "web",
            "exec sleep 1000",
            "  env: {FOO: from-manifest}\n  workingDir: /tmp\n  user: \"1000:1000\"\n  capabilities: {add: [NET_ADMIN]}\n",
        ),
    );
    let c = agent.wait_container("web", 60, "running", |c| c["state"] == "running");
    let pid = pid_of(&c);
    let (state, run) = (
        agent.state.display().to_string(),
        agent.run.display().to_string(),
    );
    let exec = |extra: &[&str], cmd: &str| agent.exec(extra, "web", cmd);

    let probe = "grep -E '^(Uid|Gid|CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status; \
                 for n in mnt net pid uts ipc cgroup; do echo \"ns $n $(readlink /proc/self/ns/$n)\"; done; \
                 echo \"FOO=$FOO\"; echo \"pwd=$(pwd)\"; echo \"hostname=$(hostname)\"; \
                 echo \"root=$(stat -c %d:%i /)\"";
    let (code, out, err) = exec(&[], probe);
    assert_eq!(code, 0, "{out}{err}");
    let init = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["Uid", "Gid", "CapEff", "CapBnd", "Seccomp", "NoNewPrivs"] {
        assert_eq!(
            status_field(&out, key),
            status_field(&init, key),
            "{key} differs from the init's\n{out}"
        );
    }
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
    // A non-root user holds no capability (moby's rule), only the bounding set.
    assert_eq!(status_field(&init, "CapEff"), "0000000000000000", "{init}");
    assert_ne!(status_field(&init, "CapBnd"), "0000000000000000", "{init}");
    // Root by `--user 0` gets the container's set, as `docker exec -u 0`.
    let (_, root, _) = exec(&["--user", "0"], "grep CapEff /proc/self/status");
    assert_eq!(
        status_field(&root, "CapEff"),
        status_field(&init, "CapBnd"),
        "{root}"
    );
    for ns in ["mnt", "net", "pid", "uts", "ipc", "cgroup"] {
        let want = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert!(
            out.contains(&format!("ns {ns} {}", want.display())),
            "not in the init's {ns} namespace\n{out}"
        );
    }
    assert!(out.contains("FOO=from-manifest"), "{out}");
    assert!(out.contains("pwd=/tmp"), "{out}");
    assert!(out.contains("hostname=web"), "{out}");
    // Its root is the init's root (the container's overlay), not the host's.
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        out.contains(&format!("root={}:{}", root.dev(), root.ino())),
        "{out}"
    );
    // In the container's cgroup, and not seen from the host's pid namespace as pid 1.
    let (_, cg, _) = exec(&[], "cat /proc/self/cgroup");
    let init_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = |text: &str| {
        text.lines()
            .find(|l| l.contains(":memory:"))
            .map(|l| l.to_owned())
    };
    if let Some(line) = memory(&init_cg) {
        // Inside its cgroup namespace the container's cgroup is the root.
        assert!(
            memory(&cg).is_some_and(|l| l.ends_with(":/")),
            "{cg} vs {line}"
        );
    }

    // Its streams are pipes relayed by the helper, never the caller's descriptors: the
    // caller gave /dev/null as stdin and an open file as descriptor 7.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</etc/hostname; exec {} exec --state {state} --run-dir {run} web -- sh -c 'readlink /proc/self/fd/0; ls /proc/self/fd; tty; echo x > /dev/tty && echo REACHED-TTY'",
            env!("CARGO_BIN_EXE_wharf")
        ))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("pipe:"), "stdin is not a pipe: {text}");
    assert!(
        !lines.contains(&"7"),
        "descriptor 7 leaked into the container: {text}"
    );
    assert!(text.contains("not a tty"), "{text}");
    assert!(
        !text.contains("REACHED-TTY"),
        "a controlling terminal: {text}"
    );

    // Pipes work both ways, with more than a pipe's buffer in flight.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 300000 /dev/zero | {} exec --state {state} --run-dir {run} web -- wc -c",
            env!("CARGO_BIN_EXE_wharf")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300000");

    // Overrides, and the command's own status.
    let (code, out, _) = exec(
        &["--env", "FOO=over", "--workdir", "/", "--user", "0"],
        "echo \"$FOO $(pwd) $(id -u)\"; exit 7",
    );
    assert_eq!(code, 7);
    assert_eq!(out.trim(), "over / 0");
    let (code, _, err) = exec(&[], "kill -9 $$");
    assert_eq!(code, 137, "{err}");
    let mut args = vec!["exec", "--state", &state, "--run-dir", &run, "web", "--"];
    args.push("no-such-command");
    let (code, _, err) = wharf_full(&args);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    let args = [
        "exec",
        "--state",
        &state,
        "--run-dir",
        &run,
        "nothere",
        "--",
        "true",
    ];
    let (code, _, err) = wharf_full(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no container nothere"), "{err}");
    let args = [
        "exec",
        "--state",
        &state,
        "--run-dir",
        &run,
        "../web",
        "--",
        "true",
    ];
    let (code, _, err) = wharf_full(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a container name"), "{err}");
}
