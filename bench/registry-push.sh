#!/usr/bin/env bash
# Registry push latency: one store member, one `fivefold registry serve`, and
# `fivefold bench registry-push` holding SUBSCRIBERS watch streams while
# CHANGES instances register one at a time; prints the latency from each
# registration's acknowledgement to each subscriber reading its line.
# Usage: bench/registry-push.sh            (SUBSCRIBERS=10000 CHANGES=5)
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${SUBSCRIBERS:-10000}
CHANGES=${CHANGES:-5}
# Each stream is a connection on both sides.
ulimit -n "$(( SUBSCRIBERS * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ -n "${FIVEFOLD_BIN:-}" ] || cargo build --release -q -p cli
BIN=${FIVEFOLD_BIN:-$PWD/target/release/fivefold}
tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && cat "$tmp/registry.log" "$tmp/store.log" | tail -20
    rm -rf "$tmp"
}
trap cleanup EXIT
STORE=127.0.0.1:23890 PEER=127.0.0.1:23891 REGISTRY=127.0.0.1:23892
"$BIN" store --name m1 --data-dir "$tmp/m1" --listen-client-urls "http://$STORE" \
    --listen-peer-urls "http://$PEER" --initial-cluster "m1=http://$PEER" 2>"$tmp/store.log" &
pids+=($!)
"$BIN" registry serve --listen "$REGISTRY" --endpoints "$STORE" >"$tmp/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$REGISTRY/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
echo "machine: $(nproc) cores; $SUBSCRIBERS subscribers, $CHANGES changes"
"$BIN" bench registry-push --registry "$REGISTRY" --subscribers "$SUBSCRIBERS" --changes "$CHANGES" --time-limit 300s
