# syntax=docker/dockerfile:1
#
# Gatehouse images: one per service, from one build.
#
#   docker build --target ratelimit -t gatehouse/ratelimit:0.1.0 .
#   docker build --target extauth   -t gatehouse/extauth:0.1.0 .
#   docker build --target transform -t gatehouse/transform:0.1.0 .
#
# Each image holds one statically configured binary on a distroless glibc base (no shell, no
# package manager), runs as a numeric non-root user, writes nothing to its root filesystem,
# and works under any UID (OpenShift's restricted-v2 assigns one). `<binary> healthcheck`
# probes the service's own /healthcheck, for HEALTHCHECK and compose. Without Docker,
# scripts/build-images.sh builds the same layout with podman from host-built binaries.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build ---------------------------------------------------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are copied
# out of the cached target/ into /out, which the runtime stages take whole. Envoy Gateway
# starts its rate-limit container as /bin/ratelimit (envoyproxy/ratelimit's path), so the
# ratelimit image has that name too.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p gatehouse-ratelimit -p gatehouse-extauth -p gatehouse-transform \
    && for svc in ratelimit extauth transform; do \
        mkdir -p "/out/$svc/usr/local/bin" \
        && objcopy --strip-debug "target/release/gatehouse-$svc" "/out/$svc/usr/local/bin/gatehouse-$svc"; \
    done \
    && mkdir -p /out/ratelimit/bin \
    && ln -s /usr/local/bin/gatehouse-ratelimit /out/ratelimit/bin/ratelimit

# --- runtime -------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and a nonroot user (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ENV LOG_FORMAT=json

FROM runtime AS ratelimit
COPY --from=build /out/ratelimit/ /
# envoyproxy/ratelimit's layout: rules under /data/ratelimit/config.
ENV RUNTIME_ROOT=/data RUNTIME_SUBDIRECTORY=ratelimit
USER 65532:65532
EXPOSE 8081 8080 6070
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/gatehouse-ratelimit", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gatehouse-ratelimit"]

FROM runtime AS extauth
COPY --from=build /out/extauth/ /
ENV EXTAUTH_CONFIG=/etc/gatehouse/extauth.yaml
USER 65532:65532
EXPOSE 9191 9192
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/gatehouse-extauth", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gatehouse-extauth"]

FROM runtime AS transform
COPY --from=build /out/transform/ /
ENV TRANSFORM_CONFIG=/etc/gatehouse/transform.yaml
USER 65532:65532
EXPOSE 9291 9292
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/gatehouse-transform", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gatehouse-transform"]
