#!/bin/sh
# Instructions per small-GET pass-through request, counted by callgrind (exact and repeatable on
# a shared, noisy machine, unlike timings): the sidecar (one tokio worker, JSON logs with the
# access log on, as in bench/compare-nginx.sh) runs under `valgrind --tool=callgrind` while
# examples/passthrough sends first N1, then N2 requests of a 100 B answer; the difference of the
# two totals divided by N2 - N1 is the cost of one request without start-up and shutdown. The
# larger run's profile is kept for callgrind_annotate.
#
#   apt-get install -y valgrind          # once
#   cargo build --release --bin rally-sidecar --example passthrough && sh bench/profile-passthrough.sh
#
# BIN (default target/release/rally-sidecar) names the build to profile; N1, N2 (default 2000,
# 12000) and CONNS (default 32) tune the load; OUT (default a temporary directory) keeps the
# profiles. Extra arguments go to the load generator (e.g. --body 102400, --json).
set -eu
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${BIN:-$TARGET/release/rally-sidecar}
LOADGEN=${LOADGEN:-$TARGET/release/examples/passthrough}
N1=${N1:-2000}
N2=${N2:-12000}
CONNS=${CONNS:-32}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

total() { # $1: callgrind output file -> total instructions
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
}

for n in "$N1" "$N2"; do
    cat > "$OUT/under-callgrind" <<SH
#!/bin/sh
exec env TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$n.out" "$BIN" "\$@"
SH
    chmod +x "$OUT/under-callgrind"
    "$LOADGEN" --no-direct --requests "$n" --connections "$CONNS" \
        --sidecar "sidecar=$OUT/under-callgrind" "$@" | grep -E '^\| sidecar|access lines'
done
i1=$(total "$OUT/callgrind.$N1.out")
i2=$(total "$OUT/callgrind.$N2.out")
echo "instructions: $i1 for $N1 requests, $i2 for $N2"
echo "per request: $(( (i2 - i1) / (N2 - N1) ))"
echo "profile: callgrind_annotate --inclusive=yes $OUT/callgrind.$N2.out"
