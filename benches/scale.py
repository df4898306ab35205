#!/usr/bin/env python3
"""Many containers on one host: converge time, what the agent costs while idle, the
memory each container's shim holds, the status endpoint's latency, and teardown.

Starts a real agent (release build) in a network namespace of its own against the local
registry fixture, drops N Container manifests into its folder at once (one file each,
on the default bridge network unless --network none), and measures:

- converge: N manifests written -> every container's init running its command (seen
  from the host in the container's cgroup and /proc);
- idle agent: CPU time (user + system, /proc/PID/stat) over --idle seconds with the N
  containers running, as a percentage of one core, and its RSS;
- shims: the resident memory of one shim (the process that holds a container's log and
  exit), median over the N (Pss from /proc/PID/smaps_rollup, so the shared binary pages
  count once per sharer; RSS also printed);
- status: GET /v1/containers latency with N containers (median of 50);
- teardown: K of the N manifests removed (--teardown, the others keep running) -> those
  K containers gone: their records, their network namespace files, and the host ends of
  their veths in the agent's namespace; then the other N - K the same way. At the end
  it counts what is left: records, namespace files and mounts, veths (`ip link show type
  veth` in the agent's namespace): all should be 0.

`--perf FILE` records the idle agent with `perf record -g` (for `perf report -i FILE`).

Usage (as root, from the repository root):
    benches/scale.py [--containers 200] [--teardown 100] [--idle 30] [--network default|none]

Cleans up everything it creates, also on failure: containers (through the agent, else
`wharf system reset`), the agent (by its PID), its network namespace (with it), temp dirs.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_agent import (  # noqa: E402
    ROOT, Agent, cpu_times, get, init_pids, manifest, prepare, wait_until, write_manifest)

def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def entries(folder):
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def netns_mounts(run_dir):
    """Mounts left under the run dir's netns folder (namespace files still pinned)."""
    folder = os.path.join(os.path.realpath(run_dir), "netns") + "/"
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4].startswith(folder))


def veths_by_kernel(agent):
    """veth links in the agent's network namespace, as the kernel lists them by type
    (whatever their names)."""
    out = subprocess.run(["nsenter", f"--net=/proc/{agent.pid}/ns/net", "ip", "-o", "link",
                          "show", "type", "veth"], capture_output=True, text=True, check=True)
    return len(out.stdout.splitlines())


def teardown(agent, names, networked):
    """Removes the manifests of `names` and returns the seconds until those containers
    are gone: records, namespace files and (networked) the host ends of their veths."""
    veths_after = agent.veths() - len(names) if networked else 0
    t0 = time.monotonic()
    for name in names:
        os.remove(os.path.join(agent.manifests, f"{name}.yaml"))
    t1 = wait_until(f"{len(names)} containers removed", 60 + len(names),
                    lambda: all(agent.gone(name) for name in names)
                    and (not networked or agent.veths() <= veths_after))
    return t1 - t0


def bench(wharf, n, k, idle, network, tmp, perf=None):
    agent = Agent(wharf, tmp)
    manifests, cg, sock = agent.manifests, agent.cgroup, agent.sock
    names = [f"scale{i}" for i in range(n)]
    networked = network != "none"
    out = {}
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names):
            write_manifest(manifests, name, manifest(name, str(5000 + i), network))
        pending = list(enumerate(names))

        def all_running():
            pending[:] = [(i, nm) for i, nm in pending
                          if not init_pids(cg, nm, f"sleep\0{5000 + i}\0".encode())]
            return not pending
        t1 = wait_until(f"{n} containers running", 60 + n, all_running)
        out["converge_s"] = t1 - t0

        # Let the last starts' bookkeeping settle, then measure a quiet agent.
        time.sleep(3)
        c0, w0 = cpu_times(agent.pid)[0], time.monotonic()
        if perf:
            subprocess.run(["perf", "record", "-g", "-o", perf, "-p", str(agent.pid),
                            "--", "sleep", str(idle)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(idle)
        c1, w1 = cpu_times(agent.pid)[0], time.monotonic()
        out["idle_cpu_pct"] = 100 * (c1 - c0) / (w1 - w0)
        out["idle_s"] = w1 - w0
        out["agent_rss_kb"] = status_kb(agent.pid, "VmRSS")

        shims = []
        for name in names:
            try:
                with open(f"{cg}/{name}/cgroup.procs") as f:
                    init = int(f.readline())
                with open(f"/proc/{init}/status") as f:
                    ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
                shims.append(ppid)
            except (OSError, ValueError, StopIteration):
                pass
        out["shim_pss_kb"] = statistics.median(pss_kb(p) for p in shims)
        out["shim_rss_kb"] = statistics.median(status_kb(p, "VmRSS") for p in shims)

        lat = []
        for _ in range(50):
            s = time.monotonic()
            status, body = get(sock, "/v1/containers")
            lat.append((time.monotonic() - s) * 1000)
            assert status == 200, body[:200]
        out["status_ms"] = statistics.median(lat)
        out["status_bytes"] = len(body)

        if networked and agent.veths() != n:
            # The veth count is how the teardown sees links go: it must see them come.
            raise RuntimeError(
                f"{agent.veths()} links named {agent.veth_prefix}* for {n} containers: "
                "has the veth naming (src/net/link.rs) changed?")
        out["teardown_s"] = teardown(agent, names[:k], networked)
        out["teardown_rest_s"] = teardown(agent, names[k:], networked) if k < n else None
        out["left"] = {
            "records": entries(os.path.join(agent.state, "containers")),
            "netns files": entries(os.path.join(agent.run_dir, "netns")),
            "netns mounts": netns_mounts(agent.run_dir),
            "veths": veths_by_kernel(agent),
        }
    finally:
        agent.shutdown()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--teardown", type=int, default=100,
                    help="how many of the containers the timed teardown removes first")
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--network", choices=("default", "none"), default="default")
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    ap.add_argument("--perf", metavar="FILE",
                    help="record the idle agent with `perf record -g` into FILE")
    args = ap.parse_args()
    n, k = args.containers, min(args.teardown, args.containers)
    if n < 1 or k < 1:
        ap.error("--containers and --teardown must be at least 1")
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-scale-")
    try:
        r = bench(args.wharf, n, k, args.idle, args.network, tmp, args.perf)
        net = "default bridge network" if args.network == "default" else "networks: [none]"
        print(f"{n} containers, {net}:")
        print(f"  converge, {n} manifests written at once -> all {n} inits running: "
              f"{r['converge_s']:.2f} s ({1000 * r['converge_s'] / n:.1f} ms each; "
              "target for 200, networked: < 2 s)")
        print(f"  idle agent, {n} containers running, over {r['idle_s']:.0f} s: "
              f"{r['idle_cpu_pct']:.2f}% of one core (target for 200: < 0.5%), "
              f"RSS {r['agent_rss_kb'] / 1024:.1f} MB")
        print(f"  one shim: Pss {r['shim_pss_kb']:.0f} kB, RSS {r['shim_rss_kb']:.0f} kB "
              f"(median of {n})")
        print(f"  GET /v1/containers with {n} containers: {r['status_ms']:.1f} ms "
              f"(median of 50), {r['status_bytes']} bytes")
        what = "records, netns, veths" if args.network == "default" else "records, netns"
        print(f"  teardown, {k} manifests removed -> {k} containers gone ({what}): "
              f"{r['teardown_s']:.2f} s (target for 100, networked: < 1 s)")
        if r["teardown_rest_s"] is not None:
            print(f"  teardown of the other {n - k}: {r['teardown_rest_s']:.2f} s")
        clean = not any(r["left"].values())
        print("  left after teardown: " +
              ", ".join(f"{count} {kind}" for kind, count in r["left"].items()) +
              (" (all 0)" if clean else " (NOT ALL 0)"))
        return 0 if clean else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
