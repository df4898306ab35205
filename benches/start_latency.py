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

Cleans up everything it creates: the agent (by its PID), containers, cgroups, temp dirs.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def registry():
    return os.environ.get("WHARF_TEST_REGISTRY", "127.0.0.1:5099")


def instance_id(state):
    return hashlib.sha256(os.path.realpath(state).encode()).hexdigest()[:8]


def running_cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def wait_process(procs_file, cmdline, timeout=30.0):
    """Polls (1 ms) until a pid in `procs_file` runs `cmdline`; returns the time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(procs_file) as f:
                for line in f:
                    if running_cmd(line.strip()) == cmdline:
                        return time.monotonic()
        except OSError:
            pass
        time.sleep(0.001)
    raise TimeoutError(f"no process {cmdline!r} in {procs_file}")


def get_json(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.loads(r.read())


def write_manifest(folder, name, text):
    tmp = os.path.join(folder, f".{name}.partial")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(folder, f"{name}.yaml"))


def manifest(name, marker, network):
    networks = "  networks: [none]\n" if network == "none" else ""
    return (
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n"
        f"  name: {name}\nspec:\n  image: {registry()}/test/busybox:latest\n"
        f"  command: [sleep, \"{marker}\"]\n  stopGracePeriod: 0s\n{networks}"
    )


def bench_wharf(wharf, runs, tmp):
    """Runs the agent in a network namespace of its own (`unshare --net`), so the
    bridge, veths and nftables table it makes vanish with it; the image is pulled
    beforehand from the host side, where the registry is."""
    manifests, state, run_dir = (os.path.join(tmp, d) for d in ("m", "s", "r"))
    os.makedirs(manifests)
    subprocess.run([wharf, "pull", "--state", state, "--insecure-registry", registry(),
                    f"{registry()}/test/busybox:latest"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = os.path.join(tmp, "agent.sock")
    log = open(os.path.join(tmp, "agent.log"), "w")
    agent = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         wharf, "agent", "--manifests", manifests, "--state", state, "--run-dir", run_dir,
         "--listen", f"unix:{sock}"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        inst = instance_id(state)
        cg = f"/sys/fs/cgroup/memory/wharf/{inst}"
        if not os.path.isdir("/sys/fs/cgroup/memory"):
            cg = f"/sys/fs/cgroup/wharf/{inst}"
        samples = {"none": [], "default": []}
        # Run 0 of each warms up (not timed). Alternate the two kinds run by run, so
        # machine noise hits both alike.
        for i in range(2 * (runs + 1)):
            network = ("none", "default")[i % 2]
            name = f"bench{i}"
            marker = f"{1000 + i}"
            t0 = time.monotonic()
            write_manifest(manifests, name, manifest(name, marker, network))
            t1 = wait_process(f"{cg}/{name}/cgroup.procs", b"sleep\0" + marker.encode() + b"\0")
            if i >= 2:
                samples[network].append((t1 - t0) * 1000)
            os.remove(os.path.join(manifests, f"{name}.yaml"))
            deadline = time.monotonic() + 30
            # Removed: its records, then its network namespace file (detached last).
            while (os.path.exists(os.path.join(state, "containers", name))
                   or os.path.exists(os.path.join(run_dir, "netns", name))):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not removed")
                time.sleep(0.01)
        layer = next(
            os.path.join(state, "images", "layers", d)
            for d in os.listdir(os.path.join(state, "images", "layers"))
            if os.path.exists(os.path.join(state, "images", "layers", d, "bin", "busybox")))
        rss = None
        with open(f"/proc/{agent.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = line.split()[1]
        return samples, layer, rss
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
        log.close()
        # Whatever a removal in flight left (the agent re-adopts or removes these on its
        # next start; the bench cleans up now): namespace files are bind mounts.
        netns = os.path.join(run_dir, "netns")
        for f in os.listdir(netns) if os.path.isdir(netns) else []:
            subprocess.run(["umount", os.path.join(netns, f)], check=False)


def bench_crun(layer, runs, tmp):
    """crun on the same rootfs, in a private mount namespace without the cgroup2 mount
    (crun 1.8 refuses cgroup v1 'hybrid' hosts otherwise)."""
    bundle = os.path.join(tmp, "crun")
    os.makedirs(bundle)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["root"] = {"path": layer, "readonly": True}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sleep", "2000"]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    script = f"""
import subprocess, time, json, sys
out = []
for i in range({runs}):
    cid = "wharfbench%d" % i
    t0 = time.monotonic()
    subprocess.run(["crun", "run", "--detach", "--bundle", {bundle!r}, cid], check=True)
    pid = json.loads(subprocess.run(["crun", "state", cid], capture_output=True, check=True).stdout)["pid"]
    while open("/proc/%d/cmdline" % pid, "rb").read() != b"sleep\\x002000\\x00":
        time.sleep(0.001)
    out.append((time.monotonic() - t0) * 1000)
    subprocess.run(["crun", "kill", cid, "KILL"], check=True)
    subprocess.run(["crun", "delete", "--force", cid], check=True)
print(json.dumps(out))
"""
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         "umount /sys/fs/cgroup/unified 2>/dev/null; exec python3 -c \"$0\"", script],
        capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    args = ap.parse_args()
    if not os.path.exists(args.wharf):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts", "test-registry.sh"), "start"], check=True)
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
