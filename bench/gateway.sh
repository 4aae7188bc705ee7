#!/usr/bin/env bash
# The gateway against nginx as a plain reverse proxy on loopback: the same
# backend (one account instance answering /whoami), the same number of
# connections, the same load generator (`fivefold bench http`), rounds
# alternating direct / nginx / gateway. Prints per-target medians, the latency
# each proxy adds over calling the backend directly, and gateway/nginx ratios.
#
# Needs: nginx (apt-get install nginx-light; installed here if missing and root).
# Usage: bench/gateway.sh                 (ROUNDS=3 CONNS=50 TOTAL=50000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
TOTAL=${TOTAL:-50000}

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    else
        echo "nginx not found: apt-get install nginx-light" >&2; exit 1
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q -p cli
BIN=$PWD/target/release/fivefold

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

STORE=127.0.0.1:23790 PEER=127.0.0.1:23800 BACKEND=127.0.0.1:23810 NGINX_AT=127.0.0.1:23820 GATEWAY=127.0.0.1:23830
"$BIN" store --name m1 --data-dir "$tmp/m1" --listen-client-urls "http://$STORE" \
    --listen-peer-urls "http://$PEER" --initial-cluster "m1=http://$PEER" 2>"$tmp/store.log" &
pids+=($!)
for _ in $(seq 100); do "$BIN" topology apply --default --endpoints "$STORE" >/dev/null 2>&1 && break; sleep 0.1; done
# The default routes: /whoami routes by the x-uid header.
"$BIN" gateway routes --default --endpoints "$STORE" >/dev/null
"$BIN" sample account --unit rz-hz-a --dc hz-a --city hangzhou --listen "$BACKEND" --endpoints "$STORE" >"$tmp/account.log" 2>&1 &
pids+=($!)
"$BIN" gateway serve --listen "$GATEWAY" --dc hz-a --endpoints "$STORE" >"$tmp/gateway.log" 2>&1 &
pids+=($!)
cat >"$tmp/nginx.conf" <<CONF
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend { server $BACKEND; keepalive 256; }
    server {
        listen $NGINX_AT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"$NGINX" -c "$tmp/nginx.conf" -p "$tmp"
for _ in $(seq 100); do
    curl -sf -H 'x-uid: 7' "http://$GATEWAY/whoami" >/dev/null 2>&1 && break; sleep 0.1
done

echo "machine: $(nproc) cores; $("$NGINX" -v 2>&1 | sed 's/.*: //'); $CONNS connections, $TOTAL requests per run, $ROUNDS rounds"
RESULTS="$tmp/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for target in direct nginx gateway; do
        case $target in
            direct) url="http://$BACKEND/whoami" ;;
            nginx) url="http://$NGINX_AT/whoami" ;;
            gateway) url="http://$GATEWAY/whoami" ;;
        esac
        report=$("$BIN" bench http --url "$url" --header 'x-uid: 7' --header 'x-fivefold-unit: rz-hz-a' \
            --conns "$CONNS" --total "$TOTAL" --json)
        echo "{\"target\": \"$target\", \"round\": $round, \"report\": $report}" >>"$RESULTS"
        echo "round $round $target: $(echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f req/s, p50 %.3f ms, p99 %.3f ms, errors %d" % (r["qps"], r["p50_ms"], r["p99_ms"], r["errors"]))')"
    done
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = {}
for target in ("direct", "nginx", "gateway"):
    reports = [r["report"] for r in rows if r["target"] == target]
    med[target] = {k: statistics.median(r[k] for r in reports) for k in ("qps", "p50_ms", "p99_ms")}
print(f"{'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
for target, m in med.items():
    added = "" if target == "direct" else f"{m['p50_ms'] - med['direct']['p50_ms']:>10.3f} {m['p99_ms'] - med['direct']['p99_ms']:>10.3f}"
    print(f"{target:<8} {m['qps']:>9.0f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {added}")
g, n, d = med["gateway"], med["nginx"], med["direct"]
print(f"gateway/nginx: throughput {g['qps'] / n['qps']:.2f}x, added p99 {(g['p99_ms'] - d['p99_ms']):.3f} ms vs {(n['p99_ms'] - d['p99_ms']):.3f} ms")
PY
