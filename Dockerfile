# syntax=docker/dockerfile:1
# Multi-stage build of ferry-api and ferry-worker (one image, two binaries).

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the cargo registry and target dir between builds; the
# binaries are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ferry-api --bin ferry-worker \
 && mkdir -p /out \
 && cp target/release/ferry-api target/release/ferry-worker /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app ferry
COPY --from=builder /out/ferry-api /out/ferry-worker /usr/local/bin/
WORKDIR /app
USER ferry
EXPOSE 8069
CMD ["ferry-api", "--config", "/etc/ferry/server.conf"]
