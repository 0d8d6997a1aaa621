# vfsdaxd in a container: build with `docker build -t vfsdaxd .`, run with the share and the
# socket directory bound in, e.g.
#   docker run --rm -v /srv/share:/share -v /run/vfsdaxd:/run/vfsdaxd vfsdaxd \
#       --socket-path=/run/vfsdaxd/fs0.sock --shared-dir=/share
# The daemon needs to run as root inside the container to serve files owned by several users
# (it switches fsuid/fsgid per request); give it only the capabilities it uses:
#   --cap-drop=ALL --cap-add=CHOWN,DAC_OVERRIDE,FOWNER,FSETID,SETUID,SETGID,MKNOD,SETFCAP
# Not built in CI (the CI machines have no Docker engine); the same build runs there natively.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY daemon daemon
COPY vmm-glue vmm-glue
COPY tests tests
RUN cargo build --release --locked -p vfsdax-daemon --bin vfsdaxd \
 && cargo build --release --locked -p vfsdax-vmm-glue --bin vfsdax-vmm

FROM debian:bookworm-slim
COPY --from=build /src/target/release/vfsdaxd /usr/local/bin/vfsdaxd
COPY --from=build /src/target/release/vfsdax-vmm /usr/local/bin/vfsdax-vmm
ENTRYPOINT ["/usr/local/bin/vfsdaxd"]
CMD ["--help"]
