#!/usr/bin/env python3
"""Pull + unpack of a ~100 MB multi-layer image from the local registry, against skopeo
and GNU tar on the same work in the same run.

Builds `bench/pull:latest` with umoci into the fixture registry once (four layers of
~25 MB each: incompressible random files of several sizes and compressible text in
many small files; ~100 MB unpacked, ~60 MB compressed), then, per repetition:

  wharf    `target/release/wharf pull` into a fresh state dir: fetch, verify, unpack
  skopeo   `skopeo copy docker://... oci:DIR` into a fresh dir: fetch and verify only
  unpack   per layer blob, `examples/unpack_layer` (wharf's unpacker, one process per
           layer) and GNU `tar -xzf`, each into a fresh dir

The two sides of each comparison run back to back in alternating order, and each timed
step is preceded by an untimed `sync`, so no tool pays for the other's writeback. Prints medians and the ratios wharf pull+unpack / skopeo copy (target
<= 1.0) and wharf unpack / tar (target <= 1.2).

Usage (as root, from the repository root):
    benches/pull.py [--runs 7] [--wharf target/release/wharf]
        [--unpack target/release/examples/unpack_layer]

Builds the release binary and example if missing. Removes every temp dir it makes.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = "bench/pull:latest"
LAYERS = 4
MB = 1024 * 1024


def registry():
    return os.environ.get("WHARF_TEST_REGISTRY", "127.0.0.1:5099")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def quiet(cmd):
    return run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def image_pushed(ref):
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def words(rng, n):
    vocab = ["container", "layer", "overlay", "registry", "manifest", "digest", "blob",
             "wharf", "index", "config", "whiteout", "opaque", "tar", "gzip", "zstd"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def fill_layer(root, n, rng):
    """~25 MB: 15 MB random (2 x 4 MB, 7 MB in 4-256 KB files), ~10 MB text in 4-16 KB files."""
    base = os.path.join(root, "data", f"layer{n}")
    os.makedirs(base)
    for i in range(2):
        with open(os.path.join(base, f"big{i}.bin"), "wb") as f:
            f.write(rng.randbytes(4 * MB))
    left, i = 7 * MB, 0
    while left > 0:
        size = min(left, rng.randint(4, 256) * 1024)
        d = os.path.join(base, "random", f"d{i % 16}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"r{i}.bin"), "wb") as f:
            f.write(rng.randbytes(size))
        left, i = left - size, i + 1
    left, i = 10 * MB, 0
    line = (words(rng, 200) + "\n").encode()
    while left > 0:
        size = min(left, rng.randint(4, 16) * 1024)
        d = os.path.join(base, "text", f"d{i % 32}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"t{i}.txt"), "wb") as f:
            f.write((line * (size // len(line) + 1))[:size])
        left, i = left - size, i + 1
    os.symlink("big0.bin", os.path.join(base, "link"))


def build_image(ref):
    """umoci: empty image, then four unpack/add/repack rounds (one layer each)."""
    tmp = tempfile.mkdtemp(prefix="wharf-bench-build.")
    try:
        layout, bundle = os.path.join(tmp, "oci"), os.path.join(tmp, "bundle")
        quiet(["umoci", "init", "--layout", layout])
        quiet(["umoci", "new", "--image", f"{layout}:bench"])
        rng = random.Random(20261127)
        for n in range(LAYERS):
            quiet(["umoci", "unpack", "--image", f"{layout}:bench", bundle])
            fill_layer(os.path.join(bundle, "rootfs"), n, rng)
            quiet(["umoci", "repack", "--image", f"{layout}:bench", bundle])
            shutil.rmtree(bundle)
        quiet(["umoci", "config", "--image", f"{layout}:bench", "--config.cmd", "sh"])
        quiet(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
               f"oci:{layout}:bench", f"docker://{ref}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed(cmd):
    run(["sync"])
    t0 = time.monotonic()
    run(cmd, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def layer_blobs(layout):
    """The layer blobs of the single image in an OCI layout, bottom first."""
    with open(os.path.join(layout, "index.json")) as f:
        manifest = json.load(f)["manifests"][0]["digest"]

    def blob(digest):
        return os.path.join(layout, "blobs", *digest.split(":"))

    with open(blob(manifest)) as f:
        return [(blob(l["digest"]), l["mediaType"], l["size"]) for l in json.load(f)["layers"]]


def tar_cmd(blob, media_type, target):
    flag = {"gzip": "-z", "zstd": "--zstd"}.get(media_type.rsplit("+", 1)[-1])
    # As root GNU tar already keeps owners and modes (--same-owner, -p); --numeric-owner
    # skips the passwd lookups an image unpacker never does.
    return ["tar", "--numeric-owner", "-x"] + ([flag] if flag else []) + ["-f", blob, "-C", target]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--wharf", default=os.path.join(ROOT, "target", "release", "wharf"))
    ap.add_argument("--unpack", default=os.path.join(
        ROOT, "target", "release", "examples", "unpack_layer"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("pull.py: run as root (unpacking chowns and makes whiteout devices)")
    if not os.path.exists(args.wharf) or not os.path.exists(args.unpack):
        run(["cargo", "build", "--release", "--bin", "wharf", "--example", "unpack_layer"],
            cwd=ROOT)
    run([os.path.join(ROOT, "scripts", "test-registry.sh"), "start"])
    ref = f"{registry()}/{REPO}"
    if not image_pushed(ref):
        print(f"building {ref} (once)", file=sys.stderr)
        build_image(ref)

    tmp = tempfile.mkdtemp(prefix="wharf-bench-pull.")
    try:
        wharf_s, skopeo_s, unpack_s, tar_s = [], [], [], []
        # The first skopeo copy (untimed) provides the blobs for the unpack comparison.
        blobs_dir = os.path.join(tmp, "blobs")
        quiet(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
               f"docker://{ref}", f"oci:{blobs_dir}:bench"])
        blobs = layer_blobs(blobs_dir)
        for rep in range(args.runs):
            # Peers run back to back, in alternating order, so drift in the machine's
            # load (other builds on the 2 cores, ext4 writeback) hits both alike.
            state, layout = os.path.join(tmp, f"state{rep}"), os.path.join(tmp, f"oci{rep}")
            pair = [
                (wharf_s, [args.wharf, "pull", "--state", state,
                           "--insecure-registry", registry(), ref]),
                (skopeo_s, ["skopeo", "--insecure-policy", "copy", "--quiet",
                            "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:bench"]),
            ]
            for samples, cmd in pair if rep % 2 == 0 else reversed(pair):
                samples.append(timed(cmd))

            totals = {"wharf": 0.0, "tar": 0.0}
            for i, (blob, media_type, _) in enumerate(blobs):
                order = ["wharf", "tar"] if (rep + i) % 2 == 0 else ["tar", "wharf"]
                for name in order:
                    target = os.path.join(tmp, f"unpack-{name}-{rep}-{i}")
                    os.makedirs(target)
                    cmd = ([args.unpack, blob, target] if name == "wharf"
                           else tar_cmd(blob, media_type, target))
                    totals[name] += timed(cmd)
            unpack_s.append(totals["wharf"])
            tar_s.append(totals["tar"])
        # Everything is removed only now: on ext4, creating files within a minute of
        # deleting thousands makes each inode allocation scan for "recently deleted"
        # inodes (ext4 recently_deleted(), seen with perf), which would dominate both
        # tools' times. ~2.5 GB of disk for 7 runs.

        compressed = sum(size for _, _, size in blobs) / MB
        med = {k: statistics.median(v) * 1000 for k, v in
               (("wharf", wharf_s), ("skopeo", skopeo_s), ("unpack", unpack_s), ("tar", tar_s))}
        print(f"image {ref}: {len(blobs)} layers, {compressed:.1f} MB compressed; "
              f"{args.runs} runs, medians (min):")
        rows = (("wharf pull (fetch + unpack)", "wharf", wharf_s),
                ("skopeo copy to oci: (fetch only)", "skopeo", skopeo_s),
                ("wharf unpack_layer, all layers", "unpack", unpack_s),
                ("GNU tar -x, all layers", "tar", tar_s))
        for label, key, samples in rows:
            print(f"  {label:34} {med[key]:8.1f} ms  ({min(samples) * 1000:.1f})")
        print(f"  ratio wharf pull+unpack / skopeo copy: {med['wharf'] / med['skopeo']:.2f} "
              "(target <= 1.0)")
        print(f"  ratio wharf pull+unpack / (skopeo copy + tar -x): "
              f"{med['wharf'] / (med['skopeo'] + med['tar']):.2f}")
        print(f"  ratio wharf unpack / tar:              {med['unpack'] / med['tar']:.2f} "
              "(target <= 1.2)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
