# syntax=docker/dockerfile:1
#
# Order service image: one static-ish Rust binary on distroless.
#
#   docker build -t order-service:0.1.0 .                  # the service (default target)
#   docker build --target pusher -t order-pusher:0.1.0 .   # the demo publisher
#
# The build and runtime images must use the same Debian release (trixie = 13):
# the binary links against the builder's glibc.
# Base images are pinned by tag; pin them by digest (@sha256:...) in a release pipeline.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /src

# 1. Dependencies, in their own layer: only the workspace manifests and the lock file,
#    with empty targets, so that this layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
COPY pusher/Cargo.toml pusher/
COPY loadtest/Cargo.toml loadtest/
RUN mkdir -p src pusher/src loadtest/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs pusher/src/lib.rs \
    && echo 'fn main() {}' > pusher/src/main.rs \
    && echo 'fn main() {}' > loadtest/src/main.rs \
    && cargo build --release --locked -p order-service -p pusher \
    && rm -rf src pusher/src loadtest/src

# 2. The real source. The web page (static/) and the migrations (sql/) are embedded
#    into the binary at compile time. COPY keeps the context's mtimes, which can be
#    older than the dummy build above: touch the sources so cargo rebuilds our crates.
COPY src src/
COPY sql sql/
COPY static static/
COPY testdata testdata/
COPY pusher/src pusher/src/
COPY loadtest/src loadtest/src/
RUN find src pusher/src loadtest/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p order-service -p pusher \
    && mkdir -p /out \
    && cp target/release/order-service target/release/pusher /out/

# The demo publisher (docker-compose.yml uses it: `pusher --interval 20s`).
FROM gcr.io/distroless/cc-debian13:nonroot AS pusher
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://example.invalid/order-service
LABEL org.opencontainers.image.title="order-pusher" \
      org.opencontainers.image.description="Publishes realistic and hostile orders to NATS JetStream (demo)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/pusher /usr/local/bin/pusher
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pusher"]

# The service: the default (last) target.
# distroless has no shell and no curl, so there is no HEALTHCHECK here: Kubernetes
# probes GET /healthz and /readyz instead.
FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://example.invalid/order-service
LABEL org.opencontainers.image.title="order-service" \
      org.opencontainers.image.description="Orders from NATS JetStream, stored in PostgreSQL, cached in memory, served over HTTP" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/order-service /usr/local/bin/order-service
ENV HTTP_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
# nonroot is uid/gid 65532 in distroless; the Kubernetes securityContext uses the same ids.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/order-service"]
