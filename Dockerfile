# syntax=docker/dockerfile:1
# One image, three binaries: ferry-api, ferry-worker and the ferry client.
# Built in a Rust image, run in a slim Debian with only what the binaries
# load at run time.

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the cargo registry and target dir between builds; the
# binaries are copied out of the cached target dir in the same step.
# SQLite is compiled in (libsqlite3-sys `bundled`); PostgreSQL is libpq.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ferry-api --bin ferry-worker --bin ferry \
 && mkdir -p /out \
 && cp target/release/ferry-api target/release/ferry-worker target/release/ferry /out/

FROM debian:bookworm-slim AS runtime
# libpq5: PostgreSQL; python3: the example exec handler (handlers/ingest.py);
# curl: the compose healthchecks; ca-certificates: amqps:// and https:// routes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 python3 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /app ferry
COPY --from=builder /out/ferry-api /out/ferry-worker /out/ferry /usr/local/bin/
# A working default: the example configuration and handlers (compose mounts
# the repository's over them).
COPY server.conf /etc/ferry/server.conf
COPY handlers /app/handlers
WORKDIR /app
USER ferry
ENV FERRY_ADDRESS=0.0.0.0
EXPOSE 8069
CMD ["ferry-api", "--config", "/etc/ferry/server.conf"]
