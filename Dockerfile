# rally-sidecar container image.
#   docker build -t rally-sidecar .
# The image sets no configuration: every listener stays on loopback unless a config file or the
# command line says otherwise (an address baked in here would silently beat a mounted config).
# To reach it from the host, say so explicitly — and give the admin API a token, which the
# sidecar requires whenever the admin listener is not on loopback:
#   openssl rand -hex 32 > admin-token
#   docker run --rm -p 127.0.0.1:8443:8443 -p 127.0.0.1:9464:9464 \
#     -v $PWD/tls:/etc/rally-sidecar/tls:ro -v $PWD/admin-token:/run/secrets/admin-token:ro \
#     -v rally-journal:/var/lib/rally-sidecar \
#     -e RALLY_SIDECAR_ADMIN_TOKEN_FILE=/run/secrets/admin-token rally-sidecar serve \
#     --listen 0.0.0.0:8443 --admin-listen 0.0.0.0:9464 \
#     --tls-cert /etc/rally-sidecar/tls/cert.pem --tls-key /etc/rally-sidecar/tls/key.pem
# Configuration: /etc/rally-sidecar/config.toml (mount it and pass --config) or
# RALLY_SIDECAR_<SECTION>_<KEY> variables. See config.example.toml. The journal's default path
# is relative, so it lands in the working directory, the /var/lib/rally-sidecar volume.

# ---- build ----
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# (Cargo.toml names a bench target, so its file must exist too.)
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && cargo build --release --locked --bin rally-sidecar \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin rally-sidecar \
    && strip target/release/rally-sidecar

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rally \
    && useradd --system --uid 10001 --gid rally --home-dir /var/lib/rally-sidecar --shell /usr/sbin/nologin rally \
    && mkdir -p /etc/rally-sidecar/tls /var/lib/rally-sidecar \
    && chown -R rally:rally /var/lib/rally-sidecar
COPY --from=build /src/target/release/rally-sidecar /usr/local/bin/rally-sidecar
COPY config.example.toml /etc/rally-sidecar/config.example.toml

VOLUME ["/etc/rally-sidecar", "/var/lib/rally-sidecar"]
EXPOSE 8443 9464
USER 10001:10001
WORKDIR /var/lib/rally-sidecar
ENTRYPOINT ["/usr/local/bin/rally-sidecar"]
CMD ["serve"]
