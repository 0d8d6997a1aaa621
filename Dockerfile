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
# The dependencies, in a layer rebuilt only when the manifests or the lock file change: the
# workspace's manifests with stand-in sources for every target they name (cargo loads every
# member), built once.
COPY Cargo.toml Cargo.lock ./
COPY protocol/Cargo.toml protocol/
COPY daemon/Cargo.toml daemon/
COPY vmm-glue/Cargo.toml vmm-glue/
COPY vmm-glue/driver/Cargo.toml vmm-glue/driver/
COPY vmm-glue/refvmm/Cargo.toml vmm-glue/refvmm/
COPY tests/Cargo.toml tests/
RUN for member in protocol daemon vmm-glue vmm-glue/driver vmm-glue/refvmm tests; do \
        mkdir -p "$member/src" && : > "$member/src/lib.rs"; \
    done \
 && mkdir -p vmm-glue/refvmm/src/bin vmm-glue/refvmm/benches tests/benches \
 && for target in daemon/src/main.rs vmm-glue/refvmm/src/bin/vfsdax-vmm.rs \
        vmm-glue/refvmm/benches/fault_latency.rs tests/benches/dax_roundtrip.rs \
        tests/benches/guard_cost.rs; do \
        echo 'fn main() {}' > "$target"; \
    done \
 && cargo build --release --locked -p vfsdax-daemon --bin vfsdaxd
# The daemon's sources and the one workspace crate it uses. Their roots are touched: a copied
# file keeps its (older) modification time, and cargo would take the stand-ins' build as fresh.
COPY protocol/src protocol/src
COPY daemon/src daemon/src
RUN touch protocol/src/lib.rs daemon/src/lib.rs daemon/src/main.rs \
 && cargo build --release --locked -p vfsdax-daemon --bin vfsdaxd

FROM debian:bookworm-slim
COPY --from=build /src/target/release/vfsdaxd /usr/libexec/vfsdaxd
ENTRYPOINT ["/usr/libexec/vfsdaxd"]
CMD ["--help"]
