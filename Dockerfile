# relaunch's container images: the node agent and the coordinator, from one build.
#
#   docker build --target agent -t ghcr.io/relaunch-dev/relaunch-agent:0.1.0 . && \
#   docker build --target coordinator -t ghcr.io/relaunch-dev/relaunch-coordinator:0.1.0 .
#
# (podman and buildah take the same arguments.) The second build reuses the first one's
# compilation. The runtime stage is distroless "cc": glibc (libc, libm), libgcc_s and the loader,
# which is what the binaries link dynamically, CA certificates, a passwd entry for the non-root
# user 65532 and no shell. relaunch-sandbox up --deploy writes the same layout offline from
# already built binaries (testbed/image.rs) for the sandbox and the tests.

FROM rust:1.89-bookworm AS build
# protoc: the CRI API's protobuf definitions are compiled at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The dist profile (Cargo.toml): whole-program LTO, less resident code per process.
RUN cargo build --profile dist --locked --bin relaunch-agent --bin relaunch-coordinator \
    && mkdir /out && cp target/dist/relaunch-agent target/dist/relaunch-coordinator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS coordinator
COPY --from=build /out/relaunch-coordinator /usr/local/bin/relaunch-coordinator
ENTRYPOINT ["/usr/local/bin/relaunch-coordinator"]

# Runs as root on a node (manifests/base/agent-daemonset.yaml says why: the CRI socket is
# root's); the image's own user stays non-root so that nothing runs as root by accident.
FROM runtime AS agent
COPY --from=build /out/relaunch-agent /usr/local/bin/relaunch-agent
ENTRYPOINT ["/usr/local/bin/relaunch-agent"]
