# tokengate and commerce-mock in one small image (distroless, non-root).
# No "# syntax=" line: BuildKit would try to pull its frontend image.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tokengate --bin commerce-mock \
 && install -D -t /out target/release/tokengate target/release/commerce-mock

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /usr/local/bin/
COPY proxy.toml /etc/tokengate/proxy.toml
WORKDIR /etc/tokengate
# distroless has no shell or curl: the binary checks itself.
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD ["/usr/local/bin/tokengate", "healthcheck", "--config", "/etc/tokengate/proxy.toml"]
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["--config", "/etc/tokengate/proxy.toml"]
