"""What the agent benchmarks share: a release agent on temp roots in a network namespace
of its own (`unshare --net`, so the bridge, veths and nftables table it makes vanish with
it), the busybox image pulled beforehand from the host side (where the registry is), and
Container manifests written as editors and git do (write, then rename)."""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(wharf):
    """Builds the release binary if `wharf` is missing and starts the registry fixture."""
    if not os.path.exists(wharf):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts", "test-registry.sh"), "start"], check=True)


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


def init_pids(cgroup, name, cmdline):
    """The pids in container `name`'s cgroup (under the agent's `cgroup`) whose command
    line is `cmdline` (NUL-separated, as /proc/PID/cmdline)."""
    try:
        with open(f"{cgroup}/{name}/cgroup.procs") as f:
            return [int(line) for line in f if running_cmd(line.strip()) == cmdline]
    except (OSError, ValueError):
        return []


def wait_until(what, timeout, done, interval=0.005):
    """Polls `done()` every `interval` until it is true; returns the time it was."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)
    return time.monotonic()


def wait_process(procs_file, cmdline, timeout=30.0, exclude=()):
    """Polls (1 ms) until a pid in `procs_file` (not in `exclude`) runs `cmdline`;
    returns the time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(procs_file) as f:
                for line in f:
                    pid = line.strip()
                    if int(pid) not in exclude and running_cmd(pid) == cmdline:
                        return time.monotonic()
        except (OSError, ValueError):
            pass
        time.sleep(0.001)
    raise TimeoutError(f"no process {cmdline!r} in {procs_file}")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def get(sock, path):
    """GET `path` from the agent's endpoint on unix socket `sock`: (status, body)."""
    c = UnixHTTPConnection(sock)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def write_manifest(folder, name, text):
    tmp = os.path.join(folder, f".{name}.partial")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(folder, f"{name}.yaml"))


def manifest(name, marker, network, restart=None):
    """A busybox `sleep MARKER` container, removed without a grace period; `restart`
    sets `restartPolicy` (else the default, `Always`)."""
    networks = "  networks: [none]\n" if network == "none" else ""
    policy = f"  restartPolicy: {restart}\n" if restart else ""
    return (
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n"
        f"  name: {name}\nspec:\n  image: {registry()}/test/busybox:latest\n"
        f"  command: [sleep, \"{marker}\"]\n  stopGracePeriod: 0s\n{networks}{policy}"
    )


class Agent:
    """A running agent under `tmp`: `manifests`, `state`, `run_dir`, `sock`, `cgroup`
    (the instance's cgroup folder in the memory hierarchy, or cgroup2's)."""

    def __init__(self, wharf, tmp):
        self.wharf = wharf
        self.manifests, self.state, self.run_dir = (
            os.path.join(tmp, d) for d in ("m", "s", "r"))
        os.makedirs(self.manifests)
        subprocess.run([wharf, "pull", "--state", self.state, "--insecure-registry",
                        registry(), f"{registry()}/test/busybox:latest"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sock = os.path.join(tmp, "agent.sock")
        self.log = open(os.path.join(tmp, "agent.log"), "w")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
             wharf, "agent", "--manifests", self.manifests, "--state", self.state,
             "--run-dir", self.run_dir, "--listen", f"unix:{self.sock}"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        inst = instance_id(self.state)
        # The host ends of the containers' veths: src/net/link.rs `veth_name`.
        self.veth_prefix = f"wh{inst[:6]}v"
        self.cgroup = f"/sys/fs/cgroup/memory/wharf/{inst}"
        if not os.path.isdir("/sys/fs/cgroup/memory"):
            self.cgroup = f"/sys/fs/cgroup/wharf/{inst}"
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise TimeoutError("the agent did not open its endpoint")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def gone(self, name):
        """Whether container `name` is removed: its records, then its network
        namespace file (detached last)."""
        return not (os.path.exists(os.path.join(self.state, "containers", name))
                    or os.path.exists(os.path.join(self.run_dir, "netns", name)))

    def left(self):
        """Containers that still have a record or a network namespace file."""
        names = set()
        for d in (os.path.join(self.state, "containers"), os.path.join(self.run_dir, "netns")):
            if os.path.isdir(d):
                # (Not `.kept`: the logs replaced containers leave for their successors.)
                names.update(n for n in os.listdir(d) if not n.startswith("."))
        return names

    def links(self):
        """The names of the links in the agent's network namespace (its bridge, the host
        ends of the containers' veths), from /proc/PID/net/dev, which shows the network
        namespace of PID."""
        with open(f"/proc/{self.pid}/net/dev") as f:
            return [line.split(":", 1)[0].strip() for line in f if ":" in line]

    def veths(self):
        """How many host ends of container veths the agent's namespace holds."""
        return sum(1 for name in self.links() if name.startswith(self.veth_prefix))

    def terminate(self):
        """Stops the agent by its PID: SIGTERM (containers keep running), SIGKILL if it
        has not exited 10 s later."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        """Stops the agent (by its PID) and unmounts the namespace files a removal in
        flight left (the agent would re-adopt or remove them on its next start)."""
        self.terminate()
        self.log.close()
        netns = os.path.join(self.run_dir, "netns")
        for f in os.listdir(netns) if os.path.isdir(netns) else []:
            subprocess.run(["umount", os.path.join(netns, f)], check=False,
                           stderr=subprocess.DEVNULL)

    def shutdown(self, timeout=120):
        """Removes every container through the agent (their manifests deleted), waits up
        to `timeout` for them to go, and stops the agent by its PID. What a failed run
        left (the agent died, or a removal hung) is removed by `wharf system reset` once
        the agent is stopped, in a network namespace of its own (the agent's links went
        with the agent's namespace; the containers' namespaces are pinned in the run
        dir, which reset empties)."""
        for f in os.listdir(self.manifests):
            try:
                os.remove(os.path.join(self.manifests, f))
            except FileNotFoundError:
                pass
        deadline = time.monotonic() + timeout
        while self.left() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.left()
        self.terminate()
        if left:
            print(f"{len(left)} containers left by the run; wharf system reset",
                  file=sys.stderr)
            subprocess.run(["unshare", "--net", self.wharf, "system", "reset", "--state",
                            self.state, "--run-dir", self.run_dir, "--timeout", "0s"],
                           check=False, stdout=sys.stderr)
        self.stop()


def busybox_layer(state):
    """The unpacked busybox layer under an agent's state (a rootfs crun can run)."""
    layers = os.path.join(state, "images", "layers")
    return next(os.path.join(layers, d) for d in os.listdir(layers)
                if os.path.exists(os.path.join(layers, d, "bin", "busybox")))


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid):
    """(own, reaped children's) CPU seconds, user + system, of `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14 to 17 (1-based) of the whole line.
    own = (int(fields[11]) + int(fields[12])) / TICKS
    return own, (int(fields[13]) + int(fields[14])) / TICKS


def crun_bundle(layer, tmp, args):
    """A crun bundle in `tmp` running `args` on the rootfs `layer`, read-only."""
    bundle = os.path.join(tmp, "crun")
    os.makedirs(bundle)
    subprocess.run(["crun", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["root"] = {"path": layer, "readonly": True}
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


def run_for_crun(script):
    """Runs a Python `script` that drives crun, in a private mount namespace without
    the cgroup2 mount (crun 1.8 refuses cgroup v1 'hybrid' hosts otherwise); returns
    the JSON of its last line."""
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         "umount /sys/fs/cgroup/unified 2>/dev/null; exec python3 -c \"$0\"", script],
        capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_crun(layer, runs, tmp):
    """crun on the same rootfs, in a private mount namespace without the cgroup2 mount
    (crun 1.8 refuses cgroup v1 'hybrid' hosts otherwise)."""
    bundle = crun_bundle(layer, tmp, ["sleep", "2000"])
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
    return run_for_crun(script)
