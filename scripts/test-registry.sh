#!/usr/bin/env bash
# The registry fixture for wharf's tests (see shared/design/testing.md).
#
#   scripts/test-registry.sh start   start the registry (if needed) and push the test images
#   scripts/test-registry.sh stop    stop the registry this script started
#   scripts/test-registry.sh env     print `export WHARF_TEST_REGISTRY=...` lines for eval
#   scripts/test-registry.sh running exit 0 if a registry answers on the port
#
# Environment:
#   WHARF_TEST_REGISTRY_PORT  loopback port (default 5099)
#   WHARF_FIXTURES            work dir for config, storage, pid file, images (default /tmp/wharf-fixtures)
#
# The registry is Debian's docker-registry (the CNCF distribution registry) on plain HTTP,
# bound to 127.0.0.1 only. Images are built from Debian's busybox-static with umoci and
# pushed with skopeo, so the fixture depends on no network beyond Debian's archive.
set -euo pipefail

PORT="${WHARF_TEST_REGISTRY_PORT:-5099}"
WORK="${WHARF_FIXTURES:-/tmp/wharf-fixtures}"
ADDR="127.0.0.1:${PORT}"
PID_FILE="$WORK/registry-${PORT}.pid"
LOG_FILE="$WORK/registry-${PORT}.log"
CONFIG="$WORK/registry-${PORT}.yml"
STORAGE="$WORK/registry-${PORT}-storage"
LAYOUT="$WORK/oci"
BUSYBOX_REF="docker://${ADDR}/test/busybox:latest"
PACKAGES=(busybox-static docker-registry skopeo umoci nftables crun)

log() { printf 'test-registry: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Install what is missing, as root only. `apt-get update` only when the plain install
# fails: it is slow and needs the network, and the lists are usually fresh enough.
ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y "${missing[@]}" </dev/null; then
        apt-get update </dev/null
        apt-get install -y "${missing[@]}" </dev/null
    fi
}

registry_answers() {
    curl -fsS -o /dev/null --max-time 2 "http://${ADDR}/v2/" 2>/dev/null
}

# The recorded PID, if that process is still a docker-registry (guards against PID reuse).
recorded_pid() {
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid="$(cat "$PID_FILE")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'docker-registry' || return 1
    echo "$pid"
}

write_config() {
    mkdir -p "$STORAGE"
    # Deletes enabled so tests can exercise `image rm` against the registry; no
    # redis, no auth: a plain loopback registry.
    cat >"$CONFIG" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${STORAGE}
  delete:
    enabled: true
http:
  addr: ${ADDR}
YAML
}

start_registry() {
    if registry_answers; then
        if pid="$(recorded_pid)"; then
            log "registry already running on ${ADDR} (pid $pid)"
        else
            log "something already answers /v2/ on ${ADDR}; using it"
        fi
        return 0
    fi
    write_config
    # fd 9 (the start lock) is closed so the registry does not hold the lock forever.
    # setsid: the registry must outlive the shell that started it (tests, other
    # engineers' sessions) and not receive that shell's job-control signals.
    setsid docker-registry serve "$CONFIG" >>"$LOG_FILE" 2>&1 </dev/null 9>&- &
    echo $! >"$PID_FILE"
    local i
    for i in $(seq 1 100); do
        if registry_answers; then
            log "registry up on ${ADDR} (pid $(cat "$PID_FILE"))"
            return 0
        fi
        if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
            tail -n 20 "$LOG_FILE" >&2 || true
            die "registry exited during start (log: $LOG_FILE)"
        fi
        sleep 0.1
    done
    die "registry did not answer http://${ADDR}/v2/ within 10s (log: $LOG_FILE)"
}

# A tiny image: busybox-static plus symlinks, a root and a nobody user.
build_busybox_layout() {
    [ -f "$LAYOUT/index.json" ] && grep -q '"busybox"' "$LAYOUT/index.json" && return 0
    local tmp
    tmp="$(mktemp -d "$WORK/build.XXXXXX")"
    local rootfs="$tmp/rootfs" bundle="$tmp/bundle" layout="$tmp/oci"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev}
    chmod 1777 "$rootfs/tmp"
    chmod 700 "$rootfs/root"
    cp /bin/busybox "$rootfs/bin/busybox"
    chroot "$rootfs" /bin/busybox --install -s
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$rootfs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$rootfs/etc/group"
    umoci init --layout "$layout"
    umoci new --image "$layout:busybox"
    umoci unpack --image "$layout:busybox" "$bundle"
    cp -a "$rootfs/." "$bundle/rootfs/"
    umoci repack --image "$layout:busybox" "$bundle"
    umoci config --image "$layout:busybox" --config.cmd sh \
        --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
    umoci gc --layout "$layout"
    # Rename last so an interrupted build never leaves a half layout behind.
    rm -rf "$LAYOUT"
    mv "$layout" "$LAYOUT"
    rm -rf "$tmp"
}

push_images() {
    if skopeo inspect --tls-verify=false "$BUSYBOX_REF" >/dev/null 2>&1; then
        return 0
    fi
    build_busybox_layout
    # --insecure-policy: a fresh machine may lack /etc/containers/policy.json, and this
    # is our own image going to our own loopback registry.
    skopeo --insecure-policy copy --dest-tls-verify=false "oci:${LAYOUT}:busybox" "$BUSYBOX_REF" >&2
    log "pushed ${ADDR}/test/busybox:latest"
}

cmd_start() {
    ensure_packages
    mkdir -p "$WORK"
    # Serialise concurrent starts (several test runs, several engineers).
    exec 9>"$WORK/lock"
    flock 9
    start_registry
    push_images
    exec 9>&-
}

cmd_stop() {
    local pid
    if pid="$(recorded_pid)"; then
        kill "$pid"
        local i
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
        log "stopped registry (pid $pid)"
    else
        log "no registry recorded in $PID_FILE; nothing to stop"
    fi
    rm -f "$PID_FILE"
}

cmd_env() {
    echo "export WHARF_TEST_REGISTRY=${ADDR}"
    echo "export WHARF_TEST_IMAGE=${ADDR}/test/busybox:latest"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    running) registry_answers ;;
    *) echo "usage: $0 start|stop|env|running" >&2; exit 2 ;;
esac
