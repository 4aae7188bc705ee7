#!/usr/bin/env bash
# Memory and data size: loads KEYS keys of VAL_SIZE bytes into fivefold and
# into etcd (same member count; one system at a time, so they never share
# the disk), and prints for each: the largest member's RSS after the load
# (now and peak), its data on disk, and put latency measured before the
# load and twice after it with the same small probe workloads.
#
#   bench/load.sh                       # 1,000,000 keys of 256 bytes, 3 members, both
#   SYSTEMS=fivefold MEMBERS=1 KEYS=307693 VAL_SIZE=65000 \
#       FLAGS="--snapshot-count 1000 --snapshot-catchup-entries 100" bench/load.sh   # 20 GB live
#
# FLAGS go to the members of both systems (etcd's flag names).
#
# Needs what compare.sh needs. Both systems get the same, large enough
# --quota-backend-bytes; etcd warns above 8 GiB and is run anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-3}
KEYS=${KEYS:-1000000}
VAL_SIZE=${VAL_SIZE:-256}
SYSTEMS=${SYSTEMS:-"fivefold etcd"}
# shellcheck source=bench/lib.sh
. bench/lib.sh
begin_run load

QUOTA=$((KEYS * (VAL_SIZE + 100) * 2 + 4 * 1024 * 1024 * 1024))
# Probes touch at most 1,000 keys, so the load's live data stays as it is.
PROBES=(
    "put-1x1|put --clients 1 --conns 1 --total 2000 --key-space-size 1000"
    "put-100x10|put --clients 100 --conns 10 --total 20000 --key-space-size 1000"
)
RESULTS="$WORK/results.tsv"

probe() { # SYSTEM ENDPOINTS WHEN
    local entry name args json
    for entry in "${PROBES[@]}"; do
        name=${entry%%|*}; args=${entry#*|}
        # shellcheck disable=SC2086
        json=$("$FIVEFOLD" bench $args --endpoints "$2" --time-limit 60s --json)
        printf '%s\t%s\t%s\t%s\n' "$1" "$3" "$name" "$json" >>"$RESULTS"
    done
}

machine_line "$MEMBERS members; $KEYS keys of $VAL_SIZE bytes"
base=24379
for system in $SYSTEMS; do
    # shellcheck disable=SC2086
    endpoints=$(start "$system" $base --quota-backend-bytes "$QUOTA" ${FLAGS:-})
    probe "$system" "$endpoints" before
    echo "$system: loading $KEYS keys of $VAL_SIZE bytes ..." >&2
    started=$(date +%s%N)
    load=$("$FIVEFOLD" bench put --endpoints "$endpoints" --clients 100 --conns 10 --total "$KEYS" \
        --key-space-size "$KEYS" --sequential-keys --val-size "$VAL_SIZE" --time-limit 3600s --json)
    seconds=$((($(date +%s%N) - started) / 1000000000))
    probe "$system" "$endpoints" after
    # The same probes once more: the first pass right after the load also
    # meets the work the load left behind (the last durable commit, a
    # snapshot point, purging the log).
    probe "$system" "$endpoints" again
    disk=0
    for ((i = 0; i < MEMBERS; i++)); do
        bytes=$(du -sb "$WORK/$system-m$i" | cut -f1)
        disk=$((disk > bytes ? disk : bytes))
    done
    printf '%s\tload\t%s\t%s\n' "$system" "$seconds" "$load" >>"$RESULTS"
    printf '%s\tmemory\t%s\t%s\t%s\n' "$system" "$(rss_mib "$system" VmRSS)" "$(rss_mib "$system" VmHWM)" "$disk" >>"$RESULTS"
    stop_members
    rm -rf "$WORK/$system"-m*
    base=$((base + 100))
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
for system in dict.fromkeys(r[0] for r in rows):
    mine = [r for r in rows if r[0] == system]
    load = next(r for r in mine if r[1] == "load")
    report = json.loads(load[3])
    mem = next(r for r in mine if r[1] == "memory")
    print(f"{system}: loaded {report['requests']} keys in {float(load[2]):.0f} s ({report['qps']:.0f}/s, {report['errors']} errors); "
          f"largest member: RSS {mem[2]} MiB now, {mem[3]} MiB peak, {int(mem[4]) / 2**30:.2f} GiB on disk")
    for name in dict.fromkeys(r[2] for r in mine if r[1] in ("before", "after", "again")):
        b = json.loads(next(r[3] for r in mine if r[1] == "before" and r[2] == name))
        a = json.loads(next(r[3] for r in mine if r[1] == "after" and r[2] == name))
        g = json.loads(next(r[3] for r in mine if r[1] == "again" and r[2] == name))
        print(f"  {name:<11} before: {b['qps']:>7.0f}/s p99 {b['p99_ms']:7.2f} ms   after: {a['qps']:>7.0f}/s p99 {a['p99_ms']:7.2f} ms"
              f"   again: {g['qps']:>7.0f}/s p99 {g['p99_ms']:7.2f} ms"
              f"   p99 after/before {a['p99_ms'] / b['p99_ms']:.2f}, again/before {g['p99_ms'] / b['p99_ms']:.2f}")
PY
