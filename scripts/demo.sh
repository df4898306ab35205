#!/usr/bin/env bash
# The main job, on a fresh machine (as root): start the local registry with the busybox
# image (built offline from Debian's busybox-static), build wharf, and run the agent on
# the sample manifests in manifests/. Ctrl-C stops the agent; containers keep running
# (remove their files from manifests/ while it runs to remove them).
#
#   scripts/demo.sh [extra agent flags...]
#
# Then, in another terminal: target/release/wharf ps, wharf logs hello, wharf inspect job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-registry.sh start
command -v cargo >/dev/null || { echo "demo: cargo is missing (install Rust from rustup.rs)" >&2; exit 1; }
cargo build --release
exec target/release/wharf agent \
    --manifests "${WHARF_MANIFESTS:-$PWD/manifests}" \
    --state "${WHARF_STATE:-/var/lib/wharf}" \
    --run-dir "${WHARF_RUN_DIR:-/run/wharf}" \
    --insecure-registry "127.0.0.1:${WHARF_TEST_REGISTRY_PORT:-5099}" \
    "$@"
