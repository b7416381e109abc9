# The action's image: a static `spot` (musl) from scratch. Built once per release and
# referenced by digest from action.yml on tagged releases (see
# .github/workflows/release.yml); the in-repo `image: Dockerfile` is for branches.
FROM rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rustup target add "$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --bin spot --target "$(uname -m)-unknown-linux-musl" \
 && mkdir /out \
 && cp "target/$(uname -m)-unknown-linux-musl/release/spot" /out/spot \
 && ln -s spot /out/spot-action \
 && ln -s spot /out/spot-action-post \
 && mkdir -m 1777 /out/tmp

# From scratch: the binary and the CA certificates (for AWS and GitHub over TLS), nothing
# else to pin or patch. No USER: the runner needs root to write the workspace. No shell:
# the binary handles SIGINT/SIGTERM itself as PID 1.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/spot-action"]
