# syntax=docker/dockerfile:1
# vfsdaxd in a container: build with `docker build -t vfsdaxd .`, run with the share and the
# socket directory bound in, e.g.
#   docker run --rm -v /srv/share:/share -v /run/vfsdaxd:/run/vfsdaxd vfsdaxd \
#       --socket-path=/run/vfsdaxd/fs0.sock --shared-dir=/share --sandbox=none
# (the container is the sandbox; --sandbox=namespace would also need CAP_SYS_ADMIN).
# The daemon needs to run as root inside the container to serve files owned by several users
# (it switches fsuid/fsgid per request); give it only the capabilities it uses:
#   --cap-drop=ALL --cap-add=CHOWN,DAC_OVERRIDE,FOWNER,FSETID,SETUID,SETGID,MKNOD,SETFCAP
# Not built in CI (the CI machines have no Docker engine); the same build runs there natively.

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace (cargo loads every member's manifest and target, so no stand-ins that
# could drift from them); .dockerignore keeps build output and the fuzz corpus out. The
# downloaded and built dependencies live in BuildKit cache mounts (Docker >= 23 builds with
# BuildKit by default), so a change of vfsdax's sources rebuilds only its own crates.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vfsdax-daemon --bin vfsdaxd \
 && cp target/release/vfsdaxd /usr/local/bin/vfsdaxd

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/vfsdaxd /usr/libexec/vfsdaxd
ENTRYPOINT ["/usr/libexec/vfsdaxd"]
CMD ["--help"]
