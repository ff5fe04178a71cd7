#!/bin/sh
# Pass-through side by side in one run: direct to a fixed local origin, through rally-sidecar,
# and through nginx from Debian's packages (keep-alive upstream), for a 100 B and a 100 KB
# response; first at equal CPU (one tokio worker and one nginx worker, both pinned to CPU 1,
# the load generator and the origin on CPU 0), then at defaults (no pinning, the sidecar's
# default worker count, nginx `worker_processes auto`).
#
#   apt-get install -y nginx-light      # once
#   cargo build --release --bin rally-sidecar --example passthrough && sh bench/compare-nginx.sh
#
# SECONDS_PER (default 5) per target and round, ROUNDS (default 3: the targets interleaved,
# medians reported) and CONNS (default 32) tune the load; SIZES (default "100 102400")
# and BLOCKS (default "pinned defaults") choose what runs. BIN (default the target directory's
# build) is measured as "rally-sidecar"; BASELINE=/path/to/an/older/rally-sidecar measures that
# build too, as "before", in the same run and under the same pinning. Each row also gives the
# proxy's CPU time per request (the sidecar's process, nginx's processes).
# CAP (default 64) is the sidecar's upstream.max_concurrency_per_credential: the load generator
# sends one credential on all its connections, and nginx has no per-user cap, so the default
# cap of 12 (Rally's) would make 20 of the 32 connections queue in the sidecar's governor and
# measure that instead of the pass-through work; CAP=12 measures with the default.
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER=${SECONDS_PER:-5}
ROUNDS=${ROUNDS:-3}
CAP=${CAP:-64}
CONNS=${CONNS:-32}
SIZES=${SIZES:-100 102400}
BLOCKS=${BLOCKS:-pinned defaults}
BASELINE=${BASELINE:-}
ORIGIN=127.0.0.1:18080
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${BIN:-$TARGET/release/rally-sidecar}
LOADGEN=${LOADGEN:-$TARGET/release/examples/passthrough}
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

for b in "$BIN" $BASELINE; do
    name=$(echo "$b" | md5sum | cut -c1-8)
    cat > "$work/pinned-$name" <<SH
#!/bin/sh
exec taskset -c 1 env TOKIO_WORKER_THREADS=1 "$b" "\$@"
SH
    chmod +x "$work/pinned-$name"
done
pinned() { echo "$work/pinned-$(echo "$1" | md5sum | cut -c1-8)"; }

nginx_pids() { # the master and its worker(s), comma-separated
    master=$(cat "$work/nginx.pid")
    echo "$master $(ps -o pid= --ppid "$master")" | tr -s ' \n' ','
}

run() { # $1: block, $2: size
    if [ "$1" = pinned ]; then
        echo "## equal CPU: one tokio worker vs one nginx worker, on CPU 1; body $2 B"
        start_nginx 1 "taskset -c 1"
        prefix="taskset -c 0"
        sidecar="rally-sidecar=$(pinned "$BIN")"
        before=${BASELINE:+before=$(pinned "$BASELINE")}
    else
        echo "## defaults: no pinning; body $2 B"
        start_nginx auto ""
        prefix=""
        sidecar="rally-sidecar=$BIN"
        before=${BASELINE:+before=$BASELINE}
    fi
    pids=$(nginx_pids)
    $prefix "$LOADGEN" --seconds "$SECONDS_PER" --rounds "$ROUNDS" --connections "$CONNS" --body "$2" \
        --origin "$ORIGIN" ${before:+--sidecar "$before"} --sidecar "$sidecar" \
        --target "nginx=http://127.0.0.1:18081/slm/webservice/v2.0/testcaseresult" \
        --target "nginx-no-log=http://127.0.0.1:18082/slm/webservice/v2.0/testcaseresult" \
        --cpu-of "nginx=$pids" --cpu-of "nginx-no-log=$pids" \
        --sidecar-env "RALLY_SIDECAR_UPSTREAM_MAX_CONCURRENCY_PER_CREDENTIAL=$CAP"
}

echo "$(date -u +%FT%TZ) $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for size in $SIZES; do
    for block in $BLOCKS; do
        run "$block" "$size"
    done
done
