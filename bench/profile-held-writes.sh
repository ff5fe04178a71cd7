#!/bin/sh
# Where a held write's memory goes: the sidecar under `valgrind --tool=massif` while the drain
# run holds WRITES (default 2000) small result writes against a slow simulator, then SIGTERM.
# Prints the peak snapshot's largest allocation sites; the whole profile stays in OUT.
#
#   apt-get install -y valgrind          # once
#   cargo build --release --bin rally-sidecar --example drain && sh bench/profile-held-writes.sh
set -eu
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${BIN:-$TARGET/release/rally-sidecar}
WRITES=${WRITES:-2000}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
wrapper="$OUT/sidecar-under-massif.sh"
cat > "$wrapper" <<WRAP
#!/bin/sh
exec valgrind --tool=massif --massif-out-file=$OUT/massif.out --threshold=0.5 --detailed-freq=1000 --max-snapshots=60 "$BIN" "\$@"
WRAP
chmod +x "$wrapper"
"$TARGET/release/examples/drain" --writes "$WRITES" --latency 60s --grace 10s --replay-passes 0 \
    --binary "$wrapper" | grep -E "held|exit code"
# The peak snapshot: its total, then each top-level allocation site with the first frames of
# the code that asked for it (the allocator's and the runtime's frames left out).
ms_print "$OUT/massif.out" 2>/dev/null > "$OUT/massif.txt"
peak=$(sed -n 's/.*[[ ]\([0-9]*\) (peak)].*/\1/p' "$OUT/massif.txt")
awk -v n="$peak" '$1 == n && $2 ~ /,/ { on = 1; print; next } on && $1 == n + 1 && $2 ~ /,/ { exit } on' \
    "$OUT/massif.txt" > "$OUT/peak.txt"
head -1 "$OUT/peak.txt"
awk '/^->/ { if (site) print site; site = $0; shown = 0; next }
     site && shown < 2 && /0x[0-9A-F]+: / && !/alloc::|alloc\/src|raw_vec|bytes_mut|UnknownInlinedFun|aligned_malloc|unix.rs|runtime\/task/ {
         sub(/^[| ]*->/, "      "); site = site "\n" $0; shown++ }
     END { if (site) print site }' "$OUT/peak.txt" | cut -c1-160 | head -40
echo "profile: ms_print $OUT/massif.out"
