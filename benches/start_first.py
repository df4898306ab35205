#!/usr/bin/env python3
"""StartFirst updates under a client loop: failed requests, and the time from a manifest
change to the first request the new version serves.

Starts a real agent (release build) against the local registry fixture with one busybox
`httpd` container publishing port 18085, answering `/v` with its version and checked by
an `http` healthcheck (interval --interval). A client inside the agent's network
namespace (`nsenter`) GETs `127.0.0.1:18085/v` in a loop, a new connection each time,
and records every failure and when each version was first served. Then --updates
updates are written, each once the previous one finished (its generation serving, the
old copy gone):
- with `update.strategy: StartFirst`: failed requests (target: 0) and, per update, the
  time from writing the manifest to the first request the new version served;
- the same with `Recreate` (the default), for comparison: the old copy stops before the
  new one starts, so requests fail in between.

Usage (as root, from the repository root):
    benches/start_first.py [--updates 20] [--interval 200ms]

Cleans up what it creates, also on failure: the container (through the agent, else
`wharf system reset`), the client and the agent (by their PIDs), temp dirs.
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
from bench_agent import ROOT, Agent, get, prepare, registry, wait_until, write_manifest  # noqa: E402

# Runs inside the agent's network namespace; prints one JSON line per event.
CLIENT = r"""
import json, os, socket, sys, time
stop = sys.argv[1]
last = None
while not os.path.exists(stop):
    t = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", 18085), timeout=2)
        s.settimeout(5)
        s.sendall(b"GET /v HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
            raise OSError(head[:40].decode(errors="replace"))
        version = body.decode().strip()
        if version != last:
            print(json.dumps({"seen": version, "at": time.monotonic()}), flush=True)
            last = version
        print(json.dumps({"ok": 1}), flush=True)
    except OSError as e:
        print(json.dumps({"failed": str(e), "at": t}), flush=True)
    time.sleep(0.005)
"""


def manifest(version, strategy, interval):
    return (
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n  name: web\nspec:\n"
        f"  image: {registry()}/test/busybox:latest\n"
        "  command: [sh, -c, 'mkdir -p /www && echo $VERSION > /www/v && exec httpd -f -p 8080 -h /www']\n"
        f"  env: {{VERSION: \"{version}\"}}\n"
        "  stopGracePeriod: 1s\n"
        "  ports: [\"18085:8080\"]\n"
        f"  healthcheck: {{http: {{port: 8080, path: /v}}, interval: {interval}, timeout: 1s, retries: 2}}\n"
        f"  update: {{strategy: {strategy}}}\n"
    )


def web(agent):
    status, body = get(agent.sock, "/v1/containers/web")
    return json.loads(body) if status == 200 else {}


def instances(agent):
    d = os.path.join(agent.state, "containers")
    return [n for n in os.listdir(d) if n.startswith("web")] if os.path.isdir(d) else []


class Client:
    """The client loop, by its PID; its events are read from its output file."""

    def __init__(self, agent, tmp):
        self.stop_file = os.path.join(tmp, "client.stop")
        if os.path.exists(self.stop_file):
            os.remove(self.stop_file)
        self.out_path = os.path.join(tmp, "client.out")
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{agent.pid}/ns/net", sys.executable, "-c", CLIENT,
             self.stop_file], stdout=self.out)

    def events(self):
        with open(self.out_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def first_seen(self, version):
        return next((e["at"] for e in self.events() if e.get("seen") == str(version)), None)

    def finish(self):
        open(self.stop_file, "w").close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        return self.events()


def run(agent, tmp, strategy, first, updates, interval):
    """`updates` updates from version `first`; returns the failed requests, the latencies
    and how many requests were served."""
    write_manifest(agent.manifests, "web", manifest(first, strategy, interval))
    wait_until("web healthy", 60, lambda: web(agent).get("health") == "healthy", 0.05)
    client = Client(agent, tmp)
    try:
        wait_until("first version served", 30, lambda: client.first_seen(first), 0.02)
        latencies = []
        for version in range(first + 1, first + 1 + updates):
            written = time.monotonic()
            write_manifest(agent.manifests, "web", manifest(version, strategy, interval))
            wait_until(f"version {version} served", 60, lambda: client.first_seen(version), 0.005)
            latencies.append(client.first_seen(version) - written)
            wait_until(f"version {version} settled", 60,
                       lambda: web(agent).get("message") is None and len(instances(agent)) == 1,
                       0.02)
        time.sleep(0.5)
    finally:
        events = client.finish()
    failed = [e for e in events if "failed" in e]
    return failed, latencies, sum(1 for e in events if "ok" in e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--interval", default="200ms")
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    args = ap.parse_args()
    prepare(args.wharf)
    tmp = tempfile.mkdtemp(prefix="wharf-startfirst-")
    agent = Agent(args.wharf, tmp)
    try:
        for strategy, first in (("StartFirst", 1), ("Recreate", 1000)):
            failed, lat, ok = run(agent, tmp, strategy, first, args.updates, args.interval)
            ms = sorted(x * 1000 for x in lat)
            print(f"{strategy}: {args.updates} updates under a client loop, healthcheck every "
                  f"{args.interval}: {len(failed)} failed of {ok + len(failed)} requests; "
                  f"manifest change -> first "
                  f"request served by the new version: median {statistics.median(ms):.0f} ms, "
                  f"min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms")
            if failed:
                print(f"  failures (first 5): {failed[:5]}")
            os.remove(os.path.join(agent.manifests, "web.yaml"))
            wait_until("web removed", 60, lambda: not instances(agent), 0.05)
    finally:
        agent.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
