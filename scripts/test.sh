#!/usr/bin/env bash
# The one command that runs wharf's whole test suite, on a fresh machine too:
#
#   scripts/test.sh [ARGS...]     ARGS go to `cargo test --all-targets`
#
# It installs the fixture packages (as root), starts the registry fixture and exports
# WHARF_TEST_REGISTRY / WHARF_TEST_IMAGE, builds once in the dev profile, runs every test
# target, and stops the registry at exit if this run started it (a registry that was
# already running belongs to someone else, e.g. a developer's session, and is left alone).
# Set WHARF_REQUIRE_PRIVILEGED=1 to turn skipped privileged tests into failures (CI does).
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

# rustup installs into ~/.cargo/bin, which a non-login shell (CI) may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install the Rust toolchain (rustup) first"
    exit 1
fi

started_registry=0
if ! scripts/test-registry.sh running; then
    started_registry=1
fi
stop_registry() {
    if [ "$started_registry" -eq 1 ]; then
        scripts/test-registry.sh stop || true
    fi
}
trap stop_registry EXIT
scripts/test-registry.sh start
eval "$(scripts/test-registry.sh env)"
log "registry fixture at $WHARF_TEST_REGISTRY"

cargo build
# Not `exec`: the EXIT trap must still run; `set -e` makes cargo's status the exit status.
cargo test --all-targets "$@"
