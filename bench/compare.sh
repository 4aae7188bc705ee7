#!/usr/bin/env bash
# Side-by-side benchmark: fivefold against Debian's etcd 3.4 on this machine,
# same member count, same loopback network, both fsyncing, in one run.
# Each workload runs against both systems in alternation (A B A B ...), and
# the medians and the ratio fivefold/etcd are printed, with peak RSS.
#
#   bench/compare.sh                 # 3 members, 3 rounds, the default workloads
#   MEMBERS=1 ROUNDS=5 bench/compare.sh
#   ONLY=put-1x1,txn-put-100x10 bench/compare.sh   # some workloads only
#   TOTAL_SCALE=0.2 bench/compare.sh                # a fifth of the requests
#
# Needs: etcd (apt-get install etcd-server; installed here if missing and root),
# a release build of fivefold (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-3}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/lib.sh
. bench/lib.sh
begin_run compare

# The workloads: name, then fivefold bench arguments: etcd's benchmark shapes
# and request counts (its performance guide: 10,000 requests for 1 client,
# 100,000 for the others; txn-put, not in the guide, 10,000), so that each
# run lasts seconds, not a moment that one log rollover or snapshot decides.
# TOTAL_SCALE (default 1) multiplies the counts: 0.2 for a quick look.
SCALE=${TOTAL_SCALE:-1}
if ! [[ "$SCALE" =~ ^[0-9]*\.?[0-9]+$ ]]; then
    echo "TOTAL_SCALE must be a positive number, got '$SCALE'" >&2; exit 2
fi
total() { python3 -c "print(max(1, round($1 * $SCALE)))"; }
WORKLOADS=(
    "put-1x1|put --clients 1 --conns 1 --total $(total 10000) --key-space-size 100000"
    "put-100x10|put --clients 100 --conns 10 --total $(total 100000) --key-space-size 100000"
    "put-1000x100|put --clients 1000 --conns 100 --total $(total 100000) --key-space-size 100000"
    "range-l-1000x100|range --clients 1000 --conns 100 --total $(total 100000) --consistency l"
    "range-s-1000x100|range --clients 1000 --conns 100 --total $(total 100000) --consistency s"
    "txn-put-100x10|txn-put --clients 100 --conns 10 --total $(total 10000) --key-space-size 1000"
)

machine_line "$MEMBERS members; $ROUNDS rounds"
ETCD=$(start etcd 32379)
FIVE=$(start fivefold 21379)
RESULTS="$WORK/results.tsv"
for entry in "${WORKLOADS[@]}"; do
    name=${entry%%|*}; args=${entry#*|}
    if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for system in fivefold etcd; do
            endpoints=$FIVE; [ "$system" = etcd ] && endpoints=$ETCD
            # shellcheck disable=SC2086
            json=$("$FIVEFOLD" bench $args --endpoints "$endpoints" --time-limit 60s --json)
            printf '%s\t%s\t%s\n' "$name" "$system" "$json" >>"$RESULTS"
        done
    done
done
python3 - "$RESULTS" "$(rss_mib fivefold VmHWM)" "$(rss_mib etcd VmHWM)" <<'PY'
import json, statistics, sys
rows = [(name, system, json.loads(report))
        for name, system, report in (line.rstrip("\n").split("\t") for line in open(sys.argv[1]))]
names = list(dict.fromkeys(r[0] for r in rows))
print(f"{'workload':<20} {'fivefold qps':>13} {'etcd qps':>10} {'ratio':>6}   {'fivefold p99':>12} {'etcd p99':>9}")
for name in names:
    med = {}
    for system in ("fivefold", "etcd"):
        reports = [r[2] for r in rows if r[0] == name and r[1] == system]
        med[system] = (statistics.median(r["qps"] for r in reports), statistics.median(r["p99_ms"] for r in reports),
                       sum(r["errors"] for r in reports))
    f, e = med["fivefold"], med["etcd"]
    errors = f"  errors f/e: {f[2]}/{e[2]}" if f[2] or e[2] else ""
    print(f"{name:<20} {f[0]:>13.0f} {e[0]:>10.0f} {f[0]/e[0]:>6.2f}   {f[1]:>10.2f}ms {e[1]:>7.2f}ms{errors}")
print(f"peak RSS of the largest member: fivefold {sys.argv[2]} MiB, etcd {sys.argv[3]} MiB")
print("rounds (qps, in run order): fivefold | etcd")
for name in names:
    per = {s: " ".join(f"{r[2]['qps']:.0f}" for r in rows if r[0] == name and r[1] == s) for s in ("fivefold", "etcd")}
    print(f"  {name:<20} {per['fivefold']} | {per['etcd']}")
PY
