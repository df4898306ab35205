#!/usr/bin/env python3
"""Probe overhead: CPU of an agent whose N containers each have a 1 s `exec` healthcheck.

Starts a real agent (release build) against the local registry fixture with N busybox
`sleep` containers (`networks: [none]`), first without a healthcheck, then replaced by
the same containers with `healthcheck: {exec: [true], interval: 1s}`, and measures over
--window seconds, each time once all are running (and, with checks, all healthy):
- the agent's own CPU (user + system of its process, /proc/PID/stat), plus that of its
  `wharf prober` (the agent's one helper process that forks a helper per `exec` probe),
  counted as the agent's: together they are the probe machinery's overhead;
- the probes' CPU: what the prober's (and the agent's) reaped children used (cutime +
  cstime): each probe is a helper that enters the container and runs `true` there;

A peer on the same work, in the same run: the CPU of one `wharf exec NAME -- true`
against one `crun exec ID true` on a crun container of the same busybox rootfs (both
measured with wait4's rusage, the median of --execs runs), when crun is installed.

Usage (as root, from the repository root):
    benches/health_probes.py [--containers 100] [--window 20] [--execs 50]

Cleans up what it creates, also on failure: the containers (through the agent, else
`wharf system reset`), the agent (by its PID), the crun container, temp dirs.
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
    ROOT, Agent, busybox_layer, cpu_times, crun_bundle, get, prepare, registry, run_for_crun,
    wait_until, write_manifest)

def manifest(name, check):
    health = "  healthcheck: {exec: [\"true\"], interval: 1s, timeout: 5s}\n" if check else ""
    return (
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n"
        f"  name: {name}\nspec:\n  image: {registry()}/test/busybox:latest\n"
        "  command: [sleep, \"100000\"]\n  stopGracePeriod: 0s\n  networks: [none]\n"
        f"{health}"
    )


def containers(agent):
    status, body = get(agent.sock, "/v1/containers")
    return json.loads(body) if status == 200 else []


def prober_pid(agent):
    """The agent's `wharf prober` child, if it runs."""
    for tid in os.listdir(f"/proc/{agent.pid}/task"):
        with open(f"/proc/{agent.pid}/task/{tid}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if b"\0prober\0" in c.read():
                        return int(pid)
    return None


def measure(agent, window):
    """CPU use over `window` seconds: the agent's own, its prober's own, and their
    reaped children's (the probes)."""
    prober = prober_pid(agent)

    def sample():
        own, children = cpu_times(agent.pid)
        p_own, p_children = cpu_times(prober) if prober else (0.0, 0.0)
        return own, p_own, children + p_children

    s0, w0 = sample(), time.monotonic()
    time.sleep(window)
    s1, w1 = sample(), time.monotonic()
    wall = w1 - w0
    pct = [100 * (b - a) / wall for a, b in zip(s0, s1)]
    return {"own_pct": pct[0], "prober_pct": pct[1], "probe_pct": pct[2]}


def exec_cpu(argv, runs):
    """Median CPU seconds (user + system, with its children) of running `argv`."""
    out = []
    for _ in range(runs):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"{argv} exited {p.returncode}")
        out.append(ru.ru_utime + ru.ru_stime)
    return statistics.median(out)


def crun_exec_cpu(layer, runs, tmp):
    """CPU of `crun exec ID true` on a crun container of `layer`."""
    bundle = crun_bundle(layer, tmp, ["sleep", "100000"])
    script = f"""
import os, subprocess, json, statistics
cid = "wharfprobebench"
subprocess.run(["crun", "run", "--detach", "--bundle", {bundle!r}, cid], check=True)
try:
    out = []
    for _ in range({runs}):
        p = subprocess.Popen(["crun", "exec", cid, "true"])
        _, status, ru = os.wait4(p.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        out.append(ru.ru_utime + ru.ru_stime)
    print(json.dumps(statistics.median(out)))
finally:
    subprocess.run(["crun", "kill", cid, "KILL"])
    subprocess.run(["crun", "delete", "--force", cid])
"""
    return run_for_crun(script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--execs", type=int, default=50)
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    args = ap.parse_args()
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-probes-")
    agent = Agent(args.wharf, tmp)
    try:
        names = [f"probe{i}" for i in range(args.containers)]
        for name in names:
            write_manifest(agent.manifests, name, manifest(name, False))
        wait_until(f"{len(names)} running", 60 + len(names),
                   lambda: sum(c["state"] == "running" for c in containers(agent)) == len(names),
                   interval=0.2)
        time.sleep(3)
        base = measure(agent, args.window)
        for name in names:
            write_manifest(agent.manifests, name, manifest(name, True))
        wait_until(f"{len(names)} healthy", 120 + len(names),
                   lambda: sum(c.get("health") == "healthy" for c in containers(agent))
                   == len(names), interval=0.5)
        time.sleep(3)
        checked = measure(agent, args.window)
        print(f"{len(names)} containers, no healthcheck: agent {base['own_pct']:.2f}% of a core")
        machinery = checked['own_pct'] + checked['prober_pct']
        print(f"{len(names)} containers, exec healthcheck every 1 s: agent + prober "
              f"{machinery:.2f}% of a core (target < 2%; the agent itself "
              f"{checked['own_pct']:.2f}%, its prober {checked['prober_pct']:.2f}%), the "
              f"probes (a helper entering the container, and the command) "
              f"{checked['probe_pct']:.1f}% of a core, "
              f"{checked['probe_pct'] * 10 / len(names):.2f} ms CPU per probe")
        one = exec_cpu([args.wharf, "exec", "--state", agent.state, "--run-dir",
                        agent.run_dir, names[0], "--", "true"], args.execs)
        print(f"one `wharf exec NAME -- true`: {one * 1000:.2f} ms CPU (median of {args.execs})")
        if shutil.which("crun"):
            peer = crun_exec_cpu(busybox_layer(agent.state), args.execs, tmp)
            print(f"one `crun exec ID true` (same rootfs, same run): {peer * 1000:.2f} ms CPU; "
                  f"ratio wharf/crun: {one / peer:.2f}")
        else:
            print("crun not installed: no comparison")
    finally:
        agent.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
