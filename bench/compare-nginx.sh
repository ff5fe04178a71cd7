#!/bin/sh
# Pass-through side by side in one run: direct to a fixed local origin, through rally-sidecar,
# and through nginx from Debian's packages (keep-alive upstream), for a 100 B and a 100 KB
# response; first at equal CPU (one tokio worker and one nginx worker, both pinned to CPU 1,
# the load generator and the origin on CPU 0), then at defaults (no pinning, the sidecar's
# default worker count, nginx `worker_processes auto`).
#
#   apt-get install -y nginx-light      # once
#   cargo build --release --examples && sh bench/compare-nginx.sh
#
# SECONDS_PER (default 8) and CONNS (default 32) tune the load.
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER=${SECONDS_PER:-8}
CONNS=${CONNS:-32}
ORIGIN=127.0.0.1:18080
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
BIN=$PWD/target/release/rally-sidecar
LOADGEN=$PWD/target/release/examples/passthrough
work=$(mktemp -d)
trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

start_nginx() { # $1: worker_processes, $2: command prefix
    kill "$(cat "$work/nginx.pid" 2>/dev/null)" 2>/dev/null || true
    sleep 0.5
    cat > "$work/nginx.conf" <<CONF
worker_processes $1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
    access_log $work/access.log;
    keepalive_requests 1000000;
    upstream origin { server $ORIGIN; keepalive 64; }
    server {
        listen 127.0.0.1:18081;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:18082;
        access_log off;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
    $2 "$NGINX" -c "$work/nginx.conf" -p "$work"
    sleep 0.5
}

cat > "$work/pinned-sidecar" <<SH
#!/bin/sh
exec taskset -c 1 env TOKIO_WORKER_THREADS=1 "$BIN" "\$@"
SH
chmod +x "$work/pinned-sidecar"

for size in 100 102400; do
    echo "## equal CPU: one tokio worker vs one nginx worker, on CPU 1; body $size B"
    start_nginx 1 "taskset -c 1"
    taskset -c 0 "$LOADGEN" --seconds "$SECONDS_PER" --connections "$CONNS" --body "$size" \
        --origin "$ORIGIN" --sidecar "$work/pinned-sidecar" \
        --target "nginx=http://127.0.0.1:18081/slm/webservice/v2.0/testcaseresult" \
        --target "nginx-no-log=http://127.0.0.1:18082/slm/webservice/v2.0/testcaseresult"
    echo "## defaults: no pinning; body $size B"
    start_nginx auto ""
    "$LOADGEN" --seconds "$SECONDS_PER" --connections "$CONNS" --body "$size" \
        --origin "$ORIGIN" --sidecar "$BIN" \
        --target "nginx=http://127.0.0.1:18081/slm/webservice/v2.0/testcaseresult" \
        --target "nginx-no-log=http://127.0.0.1:18082/slm/webservice/v2.0/testcaseresult"
done
