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
# Images pushed (all linux/amd64 unless said otherwise):
#   test/busybox:latest  busybox-static and its symlinks, one layer (others depend on it: keep it)
#   test/layers:latest   busybox + a layer of special files (hard link, symlinks, setuid,
#                        setgid, sticky dir, owner 1234:5678, a user.* xattr, a char
#                        device, a fifo) + two whiteout layers (a file, a directory of
#                        that layer) + an opaque-directory layer
#   test/multi:latest    an OCI index: linux/arm64 (busybox's layer, Cmd ["arm64-marker"])
#                        listed first, then linux/amd64 (exactly test/busybox:latest)
#   test/zstd:latest     test/busybox recompressed by skopeo with zstd (`+zstd` media types)
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
# Images derived from busybox (layers, multi) are built in their own layout so the
# busybox layout, which others read, is never rewritten. Both are complete when their
# `version` file says FIXTURE_VERSION (written last, before the rename).
EXTRA_LAYOUT="$WORK/oci-extra"
ZSTD_LAYOUT="$WORK/oci-zstd"
BUSYBOX_REF="docker://${ADDR}/test/busybox:latest"
LAYERS_REF="docker://${ADDR}/test/layers:latest"
MULTI_REF="docker://${ADDR}/test/multi:latest"
ZSTD_REF="docker://${ADDR}/test/zstd:latest"
# Bump when the derived images change: a registry holding an older build gets them
# rebuilt and pushed again on the next start (the marker lives beside the storage).
FIXTURE_VERSION=5
FIXTURE_MARKER="$WORK/registry-${PORT}-fixtures"
PACKAGES=(busybox-static docker-registry skopeo umoci nftables crun attr jq apache2-utils)

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

# test/layers, test/multi and test/zstd, built from a copy of the busybox layout.
build_extra_layout() {
    [ -f "$EXTRA_LAYOUT/index.json" ] && [ -f "$ZSTD_LAYOUT/index.json" ] \
        && [ "$(cat "$EXTRA_LAYOUT/version" 2>/dev/null)" = "$FIXTURE_VERSION" ] && return 0
    build_busybox_layout
    local tmp
    tmp="$(mktemp -d "$WORK/build.XXXXXX")"
    local layout="$tmp/oci" bundle="$tmp/bundle" opaque="$tmp/opaque"
    cp -a "$LAYOUT" "$layout"

    # Layer 2: files whose metadata an unpacker must keep. umoci repack records the
    # hard link as a tar link entry and the user.* xattr as a SCHILY.xattr pax record.
    umoci tag --image "$layout:busybox" layers
    umoci unpack --image "$layout:layers" "$bundle" >/dev/null
    local r="$bundle/rootfs"
    mkdir -p "$r"/srv/data/sub "$r"/opt/opq/sub "$r"/etc/layers/gone-dir
    echo hello >"$r/srv/data/file"
    echo copy >"$r/srv/data/sub/copy"
    ln "$r/srv/data/file" "$r/srv/data/hardlink"
    ln "$r/srv/data/file" "$r/srv/data/sub/hardlink2"
    ln -s ../data/file "$r/srv/data/symlink"
    ln -s /nonexistent/target "$r/srv/dangling"
    ln -s data/sub "$r/srv/dirlink"
    printf '#!/bin/sh\necho setuid\n' >"$r/srv/setuid"
    chmod 4755 "$r/srv/setuid"
    echo setgid >"$r/srv/setgid"
    chmod 2750 "$r/srv/setgid"
    echo owned >"$r/srv/owned"
    chown 1234:5678 "$r/srv/owned"
    chmod 640 "$r/srv/owned"
    mkdir "$r/srv/sticky" "$r/srv/private"
    chmod 1777 "$r/srv/sticky"
    chown 1234:5678 "$r/srv/private"
    chmod 750 "$r/srv/private"
    echo xattr >"$r/srv/xattr"
    setfattr -n user.wharf.fixture -v layers "$r/srv/xattr"
    mknod "$r/srv/null" c 1 3
    chmod 666 "$r/srv/null"
    mkfifo "$r/srv/fifo"
    head -c 300000 /dev/urandom >"$r/srv/data/random"
    echo removed >"$r/etc/layers/removed"
    echo kept >"$r/etc/layers/kept"
    echo gone >"$r/etc/layers/gone-dir/file"
    echo old >"$r/opt/opq/old"
    echo old2 >"$r/opt/opq/sub/old2"
    echo old3 >"$r/opt/opq/sub/kept-name"
    umoci repack --image "$layout:layers" "$bundle"
    rm -rf "$bundle"
    # Layers 3 and 4: whiteouts (`.wh.NAME`) of a file and of a directory of layer 2.
    umoci insert --image "$layout:layers" --whiteout /etc/layers/removed
    umoci insert --image "$layout:layers" --whiteout /etc/layers/gone-dir
    # Layer 5: /opt/opq replaced (`.wh..wh..opq`, which umoci writes before the
    # directory's own entry); sub/ exists below too, and only new and sub/kept-name may
    # show. `umoci insert` never closes its tar writer: this layer (and the two above)
    # have no end-of-archive blocks, and here the last file's 5 bytes are not even padded
    # to 512, so the stream ends inside a record. umoci unpack accepts that; so must we.
    mkdir -p "$opaque/sub"
    echo new >"$opaque/new"
    echo new3 >"$opaque/sub/kept-name"
    umoci insert --image "$layout:layers" --opaque "$opaque" /opt/opq
    umoci config --image "$layout:layers" --config.cmd sh --config.label org.wharf.fixture=layers

    # test/multi: the same layer under an arm64 config, so only the config (and its Cmd)
    # tells the platforms apart; arm64 is listed first so "take the first entry" fails.
    umoci tag --image "$layout:busybox" arm64
    umoci config --image "$layout:arm64" --architecture arm64 --config.cmd arm64-marker
    umoci gc --layout "$layout"

    # test/zstd: skopeo recompresses into a layout of its own. Given any place that
    # already holds the gzip blob of the same layer (the registry, this layout), its blob
    # cache substitutes that blob and the "zstd" image comes out gzip.
    skopeo --insecure-policy copy --dest-compress-format zstd \
        "oci:$layout:busybox" "oci:$tmp/zstd:zstd" >&2
    local amd arm index digest
    amd="$(jq -c '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "busybox")
        | {mediaType, digest, size, platform: {architecture: "amd64", os: "linux"}}' "$layout/index.json")"
    arm="$(jq -c '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "arm64")
        | {mediaType, digest, size, platform: {architecture: "arm64", os: "linux"}}' "$layout/index.json")"
    index="$(jq -cn --argjson arm "$arm" --argjson amd "$amd" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: [$arm, $amd]}')"
    printf '%s' "$index" >"$tmp/index-blob"
    digest="$(sha256sum "$tmp/index-blob" | cut -d' ' -f1)"
    mv "$tmp/index-blob" "$layout/blobs/sha256/$digest"
    jq -c --arg d "sha256:$digest" --argjson size "${#index}" \
        '.manifests += [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $size,
          annotations: {"org.opencontainers.image.ref.name": "multi"}}]' \
        "$layout/index.json" >"$tmp/index.json"
    mv "$tmp/index.json" "$layout/index.json"
    echo "$FIXTURE_VERSION" >"$layout/version"
    rm -rf "$EXTRA_LAYOUT" "$ZSTD_LAYOUT"
    mv "$tmp/zstd" "$ZSTD_LAYOUT"
    mv "$layout" "$EXTRA_LAYOUT"
    rm -rf "$tmp"
}

# Whether the registry serves REF (a docker:// reference); cheap, no pull.
pushed() {
    skopeo inspect --raw --tls-verify=false "$1" >/dev/null 2>&1
}

push_images() {
    # --insecure-policy: a fresh machine may lack /etc/containers/policy.json, and these
    # are our own images going to our own loopback registry.
    if ! pushed "$BUSYBOX_REF"; then
        build_busybox_layout
        skopeo --insecure-policy copy --dest-tls-verify=false "oci:${LAYOUT}:busybox" "$BUSYBOX_REF" >&2
        log "pushed ${ADDR}/test/busybox:latest"
    fi
    local current=no
    [ "$(cat "$FIXTURE_MARKER" 2>/dev/null)" = "$FIXTURE_VERSION" ] && current=yes
    if [ "$current" = no ] || ! pushed "$LAYERS_REF"; then
        build_extra_layout
        skopeo --insecure-policy copy --dest-tls-verify=false "oci:${EXTRA_LAYOUT}:layers" "$LAYERS_REF" >&2
        log "pushed ${ADDR}/test/layers:latest"
    fi
    if [ "$current" = no ] || ! pushed "$MULTI_REF"; then
        build_extra_layout
        # --all pushes every platform; --preserve-digests fails rather than rewrite the
        # index, so the registry serves the bytes we hashed.
        skopeo --insecure-policy copy --all --preserve-digests --dest-tls-verify=false \
            "oci:${EXTRA_LAYOUT}:multi" "$MULTI_REF" >&2
        log "pushed ${ADDR}/test/multi:latest"
    fi
    if [ "$current" = no ] || ! pushed "$ZSTD_REF"; then
        build_extra_layout
        skopeo --insecure-policy copy --preserve-digests --dest-tls-verify=false \
            "oci:${ZSTD_LAYOUT}:zstd" "$ZSTD_REF" >&2
        skopeo inspect --raw --tls-verify=false "$ZSTD_REF" | grep -q 'tar+zstd' \
            || die "skopeo did not recompress ${ZSTD_REF} with zstd"
        log "pushed ${ADDR}/test/zstd:latest"
    fi
    echo "$FIXTURE_VERSION" >"$FIXTURE_MARKER"
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
    echo "export WHARF_TEST_LAYERS_IMAGE=${ADDR}/test/layers:latest"
    echo "export WHARF_TEST_MULTI_IMAGE=${ADDR}/test/multi:latest"
    echo "export WHARF_TEST_ZSTD_IMAGE=${ADDR}/test/zstd:latest"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    running) registry_answers ;;
    *) echo "usage: $0 start|stop|env|running" >&2; exit 2 ;;
esac
