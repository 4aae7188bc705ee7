#!/usr/bin/env bash
# Watch delivery side by side: W watchers on one prefix, puts at a fixed
# rate, put → event latency and events missing, against fivefold and etcd
# (MEMBERS each, both running, alternating), for each shape in SHAPES.
#
#   bench/watch.sh
#   SHAPES="10000:1000:5000" bench/watch.sh     # watchers:puts per second:puts
#   SHAPES="10000:1000:5000:100" bench/watch.sh # ...:streams the watchers share
#                                               # (default: one stream each)
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-3}
SHAPES=${SHAPES:-"1000:100:1000 10000:10:300 10000:1000:5000"}
# shellcheck source=bench/lib.sh
. bench/lib.sh
begin_run watch

machine_line "$MEMBERS members each"
ETCD=$(start etcd 28379)
FIVE=$(start fivefold 29379)
for shape in $SHAPES; do
    IFS=: read -r watchers rate puts streams <<<"$shape"
    streams=${streams:-0}
    conns=$((watchers >= 10000 ? 30 : 10))
    for system in fivefold etcd; do
        endpoints=$FIVE; [ "$system" = etcd ] && endpoints=$ETCD
        json=$("$FIVEFOLD" bench watch-latency --endpoints "$endpoints" --conns "$conns" --watchers "$watchers" \
            --put-rate "$rate" --total "$puts" --watch-streams "$streams" --time-limit 60s --json)
        python3 - "$json" "$system" "$watchers" "$rate" "$puts" "$streams" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
system, watchers, rate, puts, streams = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f"{system:<9} {watchers:>6} watchers on {streams or watchers:>5} streams {rate:>5} puts/s {puts:>5} puts: p50 {r['p50_ms']:8.2f} ms"
      f"  p99 {r['p99_ms']:8.2f} ms  missing {r.get('events_missing')} of {watchers * puts}  events/s {r['qps']:.0f}")
PY
    done
done
