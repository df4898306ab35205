#!/usr/bin/env python3
"""Many containers on one host: converge time, what the agent costs while idle, the
memory each container's shim holds, and the status endpoint's latency.

Starts a real agent (release build) in a network namespace of its own against the local
registry fixture, drops N Container manifests into its folder at once (one file each,
on the default bridge network unless --network none), and measures:

- converge: manifests written -> every container's init running its command (seen from
  the host in the container's cgroup and /proc);
- idle agent: CPU time (user + system, /proc/PID/stat) over --idle seconds with the N
  containers running, as a percentage of one core, and its RSS;
- shims: the resident memory of one shim (the process that holds a container's log and
  exit), median over the N (Pss from /proc/PID/smaps_rollup, so the shared binary pages
  count once per sharer; RSS also printed);
- status: GET /v1/containers latency with N containers (median of 50);
- teardown: manifests removed -> every container gone (records and network namespace).

`--perf FILE` records the idle agent with `perf record -g` (for `perf report -i FILE`).

Usage (as root, from the repository root):
    benches/scale.py [--containers 100] [--idle 30] [--network default|none]

Cleans up everything it creates: containers (through the agent), the agent (by its PID),
its network namespace (with it), temp dirs.
"""

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_agent import (  # noqa: E402
    ROOT, Agent, manifest, prepare, running_cmd, write_manifest)

TICKS = os.sysconf("SC_CLK_TCK")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def get(sock, path):
    c = UnixHTTPConnection(sock)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / TICKS


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


def init_running(cg, name, cmdline):
    try:
        with open(f"{cg}/{name}/cgroup.procs") as f:
            return any(running_cmd(line.strip()) == cmdline for line in f)
    except OSError:
        return False


def wait_until(what, timeout, done):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)
    return time.monotonic()


def bench(wharf, n, idle, network, tmp, perf=None):
    agent = Agent(wharf, tmp)
    manifests, cg, sock = agent.manifests, agent.cgroup, agent.sock
    names = [f"scale{i}" for i in range(n)]
    out = {}
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names):
            write_manifest(manifests, name, manifest(name, str(5000 + i), network))
        pending = list(enumerate(names))

        def all_running():
            pending[:] = [(i, nm) for i, nm in pending
                          if not init_running(cg, nm, f"sleep\0{5000 + i}\0".encode())]
            return not pending
        t1 = wait_until(f"{n} containers running", 60 + n, all_running)
        out["converge_s"] = t1 - t0

        # Let the last starts' bookkeeping settle, then measure a quiet agent.
        time.sleep(3)
        c0, w0 = cpu_seconds(agent.pid), time.monotonic()
        if perf:
            subprocess.run(["perf", "record", "-g", "-o", perf, "-p", str(agent.pid),
                            "--", "sleep", str(idle)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(idle)
        c1, w1 = cpu_seconds(agent.pid), time.monotonic()
        out["idle_cpu_pct"] = 100 * (c1 - c0) / (w1 - w0)
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
    finally:
        t2 = time.monotonic()
        for name in names:
            try:
                os.remove(os.path.join(manifests, f"{name}.yaml"))
            except FileNotFoundError:
                pass
        try:
            t3 = wait_until("containers removed", 60 + n,
                            lambda: all(agent.gone(name) for name in names))
            out["teardown_s"] = t3 - t2
        finally:
            agent.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--network", choices=("default", "none"), default="default")
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    ap.add_argument("--perf", metavar="FILE",
                    help="record the idle agent with `perf record -g` into FILE")
    args = ap.parse_args()
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-scale-")
    try:
        r = bench(args.wharf, args.containers, args.idle, args.network, tmp, args.perf)
        n = args.containers
        print(f"{n} containers (network {args.network}):")
        print(f"  converge: {r['converge_s']:.2f} s ({1000 * r['converge_s'] / n:.1f} ms each)")
        print(f"  idle agent: {r['idle_cpu_pct']:.2f}% of a core, RSS {r['agent_rss_kb'] / 1024:.1f} MB")
        print(f"  shim: Pss {r['shim_pss_kb']} kB, RSS {r['shim_rss_kb']} kB (median)")
        print(f"  GET /v1/containers: {r['status_ms']:.1f} ms median, {r['status_bytes']} bytes")
        print(f"  teardown: {r['teardown_s']:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
