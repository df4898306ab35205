#!/usr/bin/env python3
"""Time from `kill -9` of a container's init to its replacement running.

Starts a real agent (release build) against the local registry fixture and writes
2 x (runs + 1) Container manifests at once (`restartPolicy: Always`, `sleep MARKER`),
alternately on `networks: [none]` and on the default bridge network, and waits until
every container runs. Then, one container at a time, it sends SIGKILL to the
container's init (found in the container's cgroup by its command line) and polls
(1 ms) until the cgroup holds a process with a new pid whose command line is the
manifest's again: the shim reaped the init, the agent saw the exit and started the
container anew. Each container is killed once, so every sample is a first crash (a
crash loop is restarted after 0, 100, 200 ms ..., src/reconciler/backoff.rs); kinds
alternate so machine noise hits both alike, the first of each is not timed, and the
agent gets 200 ms of quiet between kills. The restart counts are read back from the
endpoint at the end.

When podman is installed, the same is measured in the same run with `podman run -d
--restart=always --network none IMAGE sleep MARKER` on the same busybox image (pulled
from the same registry), one fresh container per run, timed from the SIGKILL until a
process with a new pid runs `sleep MARKER` again; the ratio wharf (none) / podman is
printed. podman runs in a private mount namespace without the cgroup2 mount, as crun
does in start_latency.py (crun 1.8 refuses cgroup v1 "hybrid" hosts).

Usage (as root, from the repository root):
    benches/restart_latency.py [--runs 25] [--wharf target/release/wharf]

Cleans up everything it creates, also on failure: the containers (through the agent,
else `wharf system reset`), the agent (by its PID), its network namespace (with it),
podman's containers (by the IDs it printed) and the image if podman did not have it,
temp dirs.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_agent import (  # noqa: E402
    ROOT, Agent, bench_crun, busybox_layer, get, init_pids, manifest, prepare, registry,
    running_cmd, wait_process, wait_until, write_manifest)

# Quiet time between two kills, so each restart is measured on an agent done with the
# last one's bookkeeping.
GAP = 0.2


def summary(samples):
    # "inclusive": a p90 within the samples, not extrapolated past the largest.
    p90 = (statistics.quantiles(samples, n=10, method="inclusive")[-1]
           if len(samples) > 1 else samples[0])
    return (f"median {statistics.median(samples):.1f} ms, p90 {p90:.1f} ms, "
            f"min {min(samples):.1f} ms, max {max(samples):.1f} ms over {len(samples)} runs")


def bench_wharf(wharf, runs, tmp):
    agent = Agent(wharf, tmp)
    try:
        kinds = [("none", "default")[i % 2] for i in range(2 * (runs + 1))]
        names = [f"restart{i}" for i in range(len(kinds))]
        cmds = [f"sleep\0{3000 + i}\0".encode() for i in range(len(kinds))]
        for i, name in enumerate(names):
            write_manifest(agent.manifests, name,
                           manifest(name, str(3000 + i), kinds[i], restart="Always"))
        wait_until(f"{len(names)} containers running", 60 + len(names),
                   lambda: all(init_pids(agent.cgroup, n, c) for n, c in zip(names, cmds)))
        # The last starts' bookkeeping (the batched /etc/hosts rewrites) done.
        time.sleep(1)

        samples = {"none": [], "default": []}
        killed_at = {}
        for i, (name, cmd) in enumerate(zip(names, cmds)):
            old = init_pids(agent.cgroup, name, cmd)
            if len(old) != 1:
                raise RuntimeError(f"{name}: expected one init running {cmd!r}, got {old}")
            t0 = time.monotonic()
            wall = time.time()
            os.kill(old[0], signal.SIGKILL)
            t1 = wait_process(f"{agent.cgroup}/{name}/cgroup.procs", cmd, exclude=old)
            if i >= 2:
                samples[kinds[i]].append((t1 - t0) * 1000)
                killed_at[name] = (wall * 1000, (t1 - t0) * 1000)
            time.sleep(GAP)
        # Where the time goes, from the runs each record keeps (millisecond stamps):
        # the shim recording the exit, then the agent starting the next run.
        split = []
        for name, (kill_ms, total) in killed_at.items():
            with open(os.path.join(agent.state, "containers", name, "record.json")) as f:
                runs = sorted(json.load(f).get("history", []), key=lambda r: r["run"])
            if len(runs) >= 2 and runs[-2].get("finishedAtMs") and runs[-1].get("startedAtMs"):
                split.append((runs[-2]["finishedAtMs"] - kill_ms,
                              runs[-1]["startedAtMs"] - runs[-2]["finishedAtMs"]))
        if split:
            print(f"  split (median of {len(split)}): kill -> exit recorded by the shim "
                  f"{statistics.median(s[0] for s in split):.1f} ms, "
                  f"exit recorded -> next run started "
                  f"{statistics.median(s[1] for s in split):.1f} ms")

        layer = busybox_layer(agent.state)
        counts = {}
        for name in names:
            status, body = get(agent.sock, f"/v1/containers/{name}")
            counts[name] = json.loads(body).get("restartCount") if status == 200 else None
        return samples, counts, layer
    finally:
        agent.shutdown()


def podman_cmd(*args):
    """podman in a private mount namespace without the cgroup2 mount (what crun 1.8
    needs on a cgroup v1 hybrid host); conmon, which restarts the container, stays in
    that namespace."""
    return ["unshare", "--mount", "sh", "-c",
            'umount /sys/fs/cgroup/unified 2>/dev/null; exec podman "$@"', "sh", *args]


def podman(*args, check=True):
    return subprocess.run(podman_cmd(*args), capture_output=True, text=True, check=check)


def wait_new_process(cmdline, before, timeout=30.0):
    """Polls (1 ms) /proc until a pid not in `before` runs `cmdline`; returns the time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in before and running_cmd(entry) == cmdline:
                return time.monotonic()
        time.sleep(0.001)
    raise TimeoutError(f"no new process {cmdline!r}")


def bench_podman(runs):
    image = f"{registry()}/test/busybox:latest"
    pulled = podman("image", "exists", image, check=False).returncode != 0
    if pulled:
        podman("pull", "--quiet", "--tls-verify=false", image)
    cids = []
    try:
        samples = []
        for i in range(runs + 1):
            marker = str(4000 + i)
            cmd = f"sleep\0{marker}\0".encode()
            cid = podman("run", "-d", "--restart=always", "--network", "none",
                         "--pull", "never", image, "sleep", marker).stdout.strip()
            cids.append(cid)
            old = int(podman("inspect", "--format", "{{.State.Pid}}", cid).stdout)
            wait_until(f"podman container {cid[:12]} running", 30,
                       lambda: running_cmd(old) == cmd, interval=0.001)
            time.sleep(GAP)
            before = {int(e) for e in os.listdir("/proc") if e.isdigit()}
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            t1 = wait_new_process(cmd, before)
            if i >= 1:
                samples.append((t1 - t0) * 1000)
            podman("rm", "--force", "--time", "0", cid)
        return samples
    finally:
        for cid in cids:
            podman("rm", "--force", "--time", "0", cid, check=False)
        if pulled:
            podman("rmi", image, check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="timed kills per kind (default 25)")
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-restart-")
    try:
        samples, counts, layer = bench_wharf(args.wharf, args.runs, tmp)
        for network in ("none", "default"):
            print(f"wharf, networks {network}: kill -9 of the init -> replacement running: "
                  f"{summary(samples[network])}")
        wrong = {n: c for n, c in counts.items() if c != 1}
        print("restartCount after one kill: " +
              ("1 for every container" if not wrong else f"not 1 for {wrong}"))
        if args.runs < 20:
            print(f"({args.runs} runs: a smoke run; figures need at least 20)")
        if shutil.which("podman"):
            pod = bench_podman(args.runs)
            print(f"podman run -d --restart=always --network none (same image): "
                  f"kill -9 -> replacement running: {summary(pod)}")
            print(f"ratio wharf (none) / podman: "
                  f"{statistics.median(samples['none']) / statistics.median(pod):.2f}")
        else:
            print("podman not installed: no comparison")
        # This machine's speed in the same run: a restart is a start, and `crun run`
        # alone is the floor of one.
        if shutil.which("crun"):
            crun = statistics.median(bench_crun(layer, args.runs, tmp))
            print(f"reference: crun run --detach (same rootfs) median {crun:.1f} ms; "
                  f"ratio wharf restart (none) / crun start: "
                  f"{statistics.median(samples['none']) / crun:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
