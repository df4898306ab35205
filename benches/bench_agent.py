"""What the agent benchmarks share: a release agent on temp roots in a network namespace
of its own (`unshare --net`, so the bridge, veths and nftables table it makes vanish with
it), the busybox image pulled beforehand from the host side (where the registry is), and
Container manifests written as editors and git do (write, then rename)."""

import hashlib
import os
import signal
import subprocess
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


def write_manifest(folder, name, text):
    tmp = os.path.join(folder, f".{name}.partial")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(folder, f"{name}.yaml"))


def manifest(name, marker, network):
    """A busybox `sleep MARKER` container, removed without a grace period."""
    networks = "  networks: [none]\n" if network == "none" else ""
    return (
        "apiVersion: wharf/v1\nkind: Container\nmetadata:\n"
        f"  name: {name}\nspec:\n  image: {registry()}/test/busybox:latest\n"
        f"  command: [sleep, \"{marker}\"]\n  stopGracePeriod: 0s\n{networks}"
    )


class Agent:
    """A running agent under `tmp`: `manifests`, `state`, `run_dir`, `sock`, `cgroup`
    (the instance's cgroup folder in the memory hierarchy, or cgroup2's)."""

    def __init__(self, wharf, tmp):
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

    def stop(self):
        """Stops the agent (by its PID) and unmounts the namespace files a removal in
        flight left (the agent would re-adopt or remove them on its next start)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.log.close()
        netns = os.path.join(self.run_dir, "netns")
        for f in os.listdir(netns) if os.path.isdir(netns) else []:
            subprocess.run(["umount", os.path.join(netns, f)], check=False)
