#!/usr/bin/env python3
"""Time from a manifest file written to the container's process running.

Starts a real agent (release build) against the local registry fixture, writes one
Container manifest at a time, and measures until the container's init has exec'd the
manifest's command (seen from the host in the container's cgroup and /proc). Each
container is removed (untimed) before the next run. When crun is installed, the same
busybox rootfs (the layer wharf unpacked) is started with `crun run --detach` in the
same run, and the ratio is printed.

Usage (as root, from the repository root):
    benches/start_latency.py [--runs 25] [--wharf target/release/wharf]

Cleans up everything it creates, also on failure: containers (through the agent, else
`wharf system reset`), the agent (by its PID), cgroups, temp dirs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_agent import (  # noqa: E402
    ROOT, Agent, bench_crun, busybox_layer, manifest, prepare, wait_process, write_manifest)


def bench_wharf(wharf, runs, tmp):
    agent = Agent(wharf, tmp)
    try:
        samples = {"none": [], "default": []}
        # Run 0 of each warms up (not timed). Alternate the two kinds run by run, so
        # machine noise hits both alike.
        for i in range(2 * (runs + 1)):
            network = ("none", "default")[i % 2]
            name = f"bench{i}"
            marker = f"{1000 + i}"
            t0 = time.monotonic()
            write_manifest(agent.manifests, name, manifest(name, marker, network))
            t1 = wait_process(f"{agent.cgroup}/{name}/cgroup.procs",
                              b"sleep\0" + marker.encode() + b"\0")
            if i >= 2:
                samples[network].append((t1 - t0) * 1000)
            os.remove(os.path.join(agent.manifests, f"{name}.yaml"))
            deadline = time.monotonic() + 30
            while not agent.gone(name):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not removed")
                time.sleep(0.01)
        layer = busybox_layer(agent.state)
        rss = None
        with open(f"/proc/{agent.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = line.split()[1]
        return samples, layer, rss
    finally:
        agent.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    args = ap.parse_args()
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-bench-")
    try:
        all_samples, layer, rss = bench_wharf(args.wharf, args.runs, tmp)
        for network, samples in all_samples.items():
            print(f"wharf, networks {network}: manifest written -> process running: median "
                  f"{statistics.median(samples):.1f} ms, "
                  f"p90 {statistics.quantiles(samples, n=10)[-1]:.1f} ms, "
                  f"min {min(samples):.1f} ms over {len(samples)} runs")
        med = statistics.median(all_samples["none"])
        extra = statistics.median(all_samples["default"]) - med
        print(f"networking (default bridge vs none) adds {extra:.1f} ms at the median; "
              f"agent RSS {rss} kB")
        if shutil.which("crun"):
            crun = bench_crun(layer, args.runs, tmp)
            cmed = statistics.median(crun)
            print(f"crun run --detach (same rootfs): median {cmed:.1f} ms over {len(crun)} runs")
            print(f"ratio wharf/crun: {med / cmed:.2f}")
        else:
            print("crun not installed: no comparison")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
