#!/usr/bin/env bash
# Restart and catch-up with a large database: a member is stopped and KEYS
# keys of VAL_SIZE bytes are written without it. Then a member holding all
# the data restarts, and the stopped one comes back (the log it needs is
# purged, so it catches up by snapshot). Prints, per system, how long each
# took to serve the newest revision and the peak RSS of each member
# involved: none should grow with the size of the data.
#
#   bench/catchup.sh                                  # 32,768 keys of 64 KiB (2 GiB), both systems
#   SYSTEMS=fivefold KEYS=98304 bench/catchup.sh      # 6 GiB, fivefold only
#   SYSTEMS=fivefold FIVEFOLD_FLAGS="--snapshot-catchup-entries 100" bench/catchup.sh
#
# Needs what compare.sh needs. 3 members; both systems take a snapshot every
# 1,000 entries and keep 5,000 entries behind it, so a member down long
# enough needs a snapshot. fivefold batches concurrent writes into one entry,
# so it keeps more writes in 5,000 entries and may catch up from the log;
# the line says which way it went. FIVEFOLD_FLAGS go to fivefold only.
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=3
KEYS=${KEYS:-32768}
VAL_SIZE=${VAL_SIZE:-65536}
SYSTEMS=${SYSTEMS:-"fivefold etcd"}
# shellcheck source=bench/lib.sh
. bench/lib.sh
begin_run catchup

QUOTA=$((KEYS * (VAL_SIZE + 100) * 2 + 4 * 1024 * 1024 * 1024))

# revision ENDPOINT: the revision a member has applied (its own status).
revision() {
    ETCDCTL_API=3 etcdctl --endpoints "$1" --command-timeout 2s endpoint status -w json 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])' 2>/dev/null \
        || echo 0
}

# wait_for ENDPOINT REVISION NAME: until the member serves REVISION.
wait_for() {
    local deadline=$((SECONDS + ${CATCHUP_LIMIT:-600}))
    until [ "$(revision "$1")" -ge "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "$system: $3 did not serve revision $2 in ${CATCHUP_LIMIT:-600} s" >&2; exit 1; }
        sleep 0.2
    done
}

seconds_since() { python3 -c "print(f'{($(date +%s%N) - $1) / 1e9:.1f}')"; }

machine_line "$MEMBERS members; $KEYS keys of $VAL_SIZE bytes written while m2 is down"
# Ports below the ephemeral range (32768+), so no client connection takes a
# stopped member's port.
base=26379
for system in $SYSTEMS; do
    if [ "$system" = fivefold ]; then
        # shellcheck disable=SC2206
        FLAGS=(--quota-backend-bytes "$QUOTA" --snapshot-count 1000 ${FIVEFOLD_FLAGS:-})
    else
        FLAGS=(--quota-backend-bytes "$QUOTA" --snapshot-count 1000)
    fi
    start "$system" $base "${FLAGS[@]}" >/dev/null
    up="127.0.0.1:$base,127.0.0.1:$((base + 10))"
    late="127.0.0.1:$((base + 20))"
    kill "$(cat "$WORK/$system-m2.pid")"
    wait_gone "$(cat "$WORK/$system-m2.pid")" || { echo "$system: m2 did not stop" >&2; exit 1; }
    echo "$system: m2 stopped; loading $KEYS keys of $VAL_SIZE bytes ..." >&2
    "$FIVEFOLD" bench put --endpoints "$up" --clients 100 --conns 10 --total "$KEYS" \
        --key-space-size "$KEYS" --sequential-keys --val-size "$VAL_SIZE" --time-limit 3600s >/dev/null
    target=$(revision "127.0.0.1:$base")
    disk=$(du -sb "$WORK/$system-m0" | cut -f1)
    printf '%s: revision %s, %.2f GiB on disk per member\n' "$system" "$target" "$(python3 -c "print($disk / 2**30)")"

    # A member holding all the data restarts: its start must not copy the state.
    kill "$(cat "$WORK/$system-m0.pid")"
    wait_gone "$(cat "$WORK/$system-m0.pid")" || { echo "$system: m0 did not stop" >&2; exit 1; }
    started=$(date +%s%N)
    start_member "$system" $base 0 "${FLAGS[@]}"
    wait_for "127.0.0.1:$base" "$target" m0
    printf '%s: m0 (all the data) restarted and served it in %s s; its peak RSS %s MiB\n' "$system" \
        "$(seconds_since "$started")" "$(member_rss_mib "$(cat "$WORK/$system-m0.pid")" VmHWM)"

    # The stopped member comes back. The senders' peaks count from here (the
    # load raised them before).
    for i in 0 1; do echo 5 >"/proc/$(cat "$WORK/$system-m$i.pid")/clear_refs"; done
    started=$(date +%s%N)
    start_member "$system" $base 2 "${FLAGS[@]}"
    wait_for "$late" "$target" m2
    seconds=$(seconds_since "$started")
    sender=0
    for i in 0 1; do
        rss=$(member_rss_mib "$(cat "$WORK/$system-m$i.pid")" VmHWM)
        sender=$((sender > rss ? sender : rss))
    done
    receiver=$(member_rss_mib "$(cat "$WORK/$system-m2.pid")" VmHWM)
    how="from the log"
    grep -qiE "installed snapshot|applied incoming snapshot" "$WORK/$system-m2.log" && how="by snapshot"
    printf '%s: m2 caught up %s in %s s; peak RSS: largest sender %s MiB, receiver %s MiB\n' \
        "$system" "$how" "$seconds" "$sender" "$receiver"
    stop_members
    [ -n "${KEEP:-}" ] || rm -rf "$WORK/$system"-m*
    base=$((base + 100))
done
