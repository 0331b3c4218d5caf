#!/usr/bin/env bash
# Build the kdgate image with buildah: no Docker daemon, no root-owned storage driver (vfs), no
# namespaces beyond chroot. Manual (minutes, gigabytes): CI does not run it.
#
#   deploy/build-image.sh                 # build localhost/kdgate:0.1.0
#   deploy/build-image.sh --smoke         # ...then run it and wait for /readyz
#
# The base is python:3.11-slim when a registry serves it; otherwise a Debian bookworm rootfs made by
# debootstrap from Debian's mirror (its python3 is 3.11 too), imported once as localhost/kdgate-base.
# Needs: buildah, debootstrap, make, curl (for --smoke); as root or in a user namespace.
# Environment: IMAGE, BASE, STORAGE_DRIVER (vfs), DEBIAN_MIRROR, SMOKE_PORT (18000), SMOKE_TIMEOUT (s).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/kdgate:0.1.0}
BASE=${BASE:-docker.io/library/python:3.11-slim}
LOCAL_BASE=localhost/kdgate-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STORAGE=(--storage-driver "${STORAGE_DRIVER:-vfs}")
SMOKE=false
[[ "${1:-}" == "--smoke" ]] && SMOKE=true

log() { printf '%s build-image: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# 1. torch: the CPU wheel only. `make docker-wheels` takes it from pip's find-links folder; a wheel
# without +cpu would be the CUDA build, multi-GB, and is refused here rather than baked in.
if ! compgen -G "wheels/torch-2.13.0*.whl" >/dev/null; then
    make docker-wheels
fi
for wheel in wheels/torch-*.whl; do
    case "$wheel" in
        *+cpu-*) ;;
        *) log "refusing $wheel: not the CPU build of torch (remove it; see Makefile docker-wheels)"; exit 1 ;;
    esac
done

# 2. The base image.
if buildah "${STORAGE[@]}" pull --quiet "$BASE" >/dev/null 2>&1; then
    base=$BASE
elif buildah "${STORAGE[@]}" inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
    base=$LOCAL_BASE
else
    log "$BASE cannot be pulled; making $LOCAL_BASE with debootstrap"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -cf "$rootfs.tar" . && rm -rf "$rootfs"
    ctr=$(buildah "${STORAGE[@]}" from scratch)
    buildah "${STORAGE[@]}" add "$ctr" "$rootfs.tar" /
    rm -f "$rootfs.tar"
    buildah "${STORAGE[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/sh "$ctr"
    buildah "${STORAGE[@]}" commit --rm "$ctr" "$LOCAL_BASE" >/dev/null
    base=$LOCAL_BASE
fi
log "base: $base"

# 3. The image. Docker format: the OCI format has no HEALTHCHECK. --layers: a rebuild after a source
# change reuses the torch and dependency layers. The build trusts the host's CA bundle
# (pip reaches PyPI through whatever TLS proxy the host trusts); it is mounted, not copied in.
cert_args=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cert_args=(--volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro
        --build-arg PIP_CERT=/run/host-ca.crt)
fi
buildah "${STORAGE[@]}" bud --isolation chroot --format docker --layers --build-arg "BASE=$base" \
    "${cert_args[@]}" --tag "$IMAGE" --file Dockerfile .
log "built $IMAGE"

# 4. Smoke: run it as the image says (its user, its command), with a throwaway /state, until /readyz
# answers 200. `buildah run --isolation chroot`, not `podman run`: podman's runtime (crun) sets rlimits
# that a sandbox may forbid ("crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted").
if $SMOKE; then
    port=${SMOKE_PORT:-18000}
    timeout=${SMOKE_TIMEOUT:-1800}
    state=$(mktemp -d)
    chown 10001:10001 "$state"
    ctr=$(buildah "${STORAGE[@]}" from "$IMAGE")
    buildah "${STORAGE[@]}" run --isolation chroot --network host --volume "$state:/state" \
        --env KDGATE_HOST=127.0.0.1 --env "KDGATE_PORT=$port" "$ctr" \
        -- kdgate serve >&2 &
    server=$!
    # The gateway's exit status on this stop is not the smoke's: the trap keeps the script's own.
    trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
          buildah "${STORAGE[@]}" rm "$ctr" >/dev/null || true; rm -rf "$state"' EXIT
    deadline=$((SECONDS + timeout))
    until curl -fsS "http://127.0.0.1:$port/readyz"; do
        kill -0 "$server" 2>/dev/null || { log "the gateway stopped"; exit 1; }
        ((SECONDS < deadline)) || { log "no ready /readyz within ${timeout}s"; exit 1; }
        sleep 10
    done
    echo
    log "ready: $IMAGE answers /readyz on 127.0.0.1:$port"
fi
