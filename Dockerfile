# Two images from one build stage (both binaries built once, stripped):
#   target tokengate (the default, last): only tokengate on distroless cc, non-root (65532)
#   target commerce-mock: the stand-in Commerce API, for the demo and the tests
# No "# syntax=" line: BuildKit would try to pull its frontend image.
# RUST_IMAGE / RUNTIME_IMAGE: the public images by default; scripts/docker-local-images.sh
# passes private stand-in names (tokengate-standin/...) only where no registry answers.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Stripped: the release profile keeps line tables (49.6 MB for tokengate, 8.5 MB stripped).
RUN cargo build --release --locked --config profile.release.strip=true \
      --bin tokengate --bin commerce-mock \
 && install -D -t /out target/release/tokengate target/release/commerce-mock

FROM ${RUNTIME_IMAGE} AS commerce-mock
COPY --from=build /out/commerce-mock /usr/local/bin/commerce-mock
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/commerce-mock"]

FROM ${RUNTIME_IMAGE} AS tokengate
COPY --from=build /out/tokengate /usr/local/bin/tokengate
COPY proxy.toml /etc/tokengate/proxy.toml
WORKDIR /etc/tokengate
USER 65532:65532
# distroless has no shell or curl: the binary checks itself.
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD ["/usr/local/bin/tokengate", "healthcheck", "--config", "/etc/tokengate/proxy.toml"]
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["--config", "/etc/tokengate/proxy.toml"]
