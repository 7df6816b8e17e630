# Two images from one build (both binaries compiled once, stripped):
#   target tokengate (the default, last): tokengate alone on an empty base, non-root (65532)
#   target commerce-mock: the stand-in Commerce API, for the demo and the tests
# No "# syntax=" line: BuildKit would try to pull its frontend image.
# RUST_IMAGE: the public image by default; scripts/docker-bases.sh passes a private
# stand-in name only where no registry answers.
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the two binaries are built from, so an edit to the docs, tests or scripts
# does not invalidate the (long: whole-program LTO) build layer.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY assets assets
# Stripped: the release profile keeps line tables (about 50 MB for tokengate, 12 MB stripped).
RUN cargo build --release --locked --config profile.release.strip=true \
      --bin tokengate --bin commerce-mock \
 && install -D -t /out target/release/tokengate target/release/commerce-mock

# The runtime root, and nothing else: the dynamic loader and the three libraries the
# binaries link (libc, libm, libgcc_s, as ldd names them: TLS is rustls and the root
# certificates are compiled in, so no OpenSSL, no CA bundle, no shell), the users file
# naming the non-root user, and a resolver order for host names (files, then DNS).
FROM build AS rootfs
RUN set -eu; mkdir -p /rootfs; \
    for lib in $(for bin in /out/*; do ldd "$bin"; done | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do \
      cp -L --parents "$lib" /rootfs; \
    done; \
    mkdir -p /rootfs/etc /rootfs/tmp /rootfs/home/nonroot /rootfs/var/lib/tokengate; \
    chmod 1777 /rootfs/tmp; chown 65532:65532 /rootfs/home/nonroot /rootfs/var/lib/tokengate; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /rootfs/etc/passwd; \
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > /rootfs/etc/group; \
    printf 'hosts: files dns\n' > /rootfs/etc/nsswitch.conf

FROM scratch AS commerce-mock
COPY --from=rootfs /rootfs/ /
COPY --from=build /out/commerce-mock /usr/local/bin/commerce-mock
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/commerce-mock"]

FROM scratch AS tokengate
COPY --from=rootfs /rootfs/ /
COPY --from=build /out/tokengate /usr/local/bin/tokengate
COPY proxy.toml /etc/tokengate/proxy.toml
WORKDIR /etc/tokengate
USER 65532:65532
# No shell or curl in the image: the binary checks itself.
HEALTHCHECK --interval=2s --timeout=2s --retries=15 CMD ["/usr/local/bin/tokengate", "healthcheck", "--config", "/etc/tokengate/proxy.toml"]
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["--config", "/etc/tokengate/proxy.toml"]
