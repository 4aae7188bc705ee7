# Shared by the benchmark scripts: start fivefold or etcd clusters on
# loopback with etcd's flag names, find peak and current RSS, clean up.
# Source it after setting MEMBERS, then call begin_run NAME.

# begin_run NAME: the binary (FIVEFOLD, default the release build), a work
# dir in /tmp (kept with KEEP=1), members stopped and the dir removed on exit,
# and the tools installed. WORK and FIVEFOLD are the script's from here on.
begin_run() {
    FIVEFOLD=${FIVEFOLD:-target/release/fivefold}
    WORK=$(mktemp -d "/tmp/fivefold-$1.XXXXXX")
    trap 'stop_members; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
    ensure_tools
}

# Stops every member this script started (start() runs in a command
# substitution, so its members are known only from the pid files), waits up
# to 10 s for them to exit, then kills what is left: the next run must not
# meet them.
stop_members() {
    local pids pid
    pids=($(cat "$WORK"/*.pids 2>/dev/null || true))
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait_gone "${pids[@]}" || true
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -f "$WORK"/*.pids "$WORK"/*.pid
}

# wait_gone PID...: waits up to 10 s for the processes to exit; fails if one
# is still running. Zombies count as gone: members started in a command
# substitution have no parent here to reap them.
wait_gone() {
    local pid alive
    for _ in $(seq 100); do
        alive=0
        for pid in "$@"; do grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status" && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

ensure_tools() {
    if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
        else
            echo "etcd or etcdctl not found: apt-get install etcd-server etcd-client" >&2; exit 1
        fi
    fi
    [ -x "$FIVEFOLD" ] || cargo build --release -p cli
}

# start_member SYSTEM BASEPORT INDEX [EXTRA FLAGS...]: starts member INDEX of
# a MEMBERS-member cluster in the background (again, if it ran before: a
# member with data ignores the initial-cluster flags) and records its pid.
start_member() {
    local system=$1 base=$2 i=$3 cluster="" j
    shift 3
    for ((j = 0; j < MEMBERS; j++)); do cluster+="${cluster:+,}m$j=http://127.0.0.1:$((base + 10 * j + 1))"; done
    local client=$((base + 10 * i)) peer=$((base + 10 * i + 1)) dir="$WORK/$system-m$i"
    local args=(--name "m$i" --data-dir "$dir" --listen-client-urls "http://127.0.0.1:$client"
        --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer"
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "$cluster"
        --initial-cluster-state new --initial-cluster-token "bench-$$" "$@")
    if [ "$system" = etcd ]; then
        etcd "${args[@]}" >>"$WORK/$system-m$i.log" 2>&1 &
    else
        "$FIVEFOLD" store "${args[@]}" >>"$WORK/$system-m$i.log" 2>&1 &
    fi
    echo $! >"$WORK/$system-m$i.pid"
    echo $! >>"$WORK/$system.pids"
}

# start SYSTEM BASEPORT [EXTRA FLAGS...]: starts MEMBERS members; prints the
# client endpoints once a write goes through.
start() {
    local system=$1 base=$2 endpoints="" i
    shift 2
    for ((i = 0; i < MEMBERS; i++)); do
        endpoints+="${endpoints:+,}127.0.0.1:$((base + 10 * i))"
        start_member "$system" "$base" "$i" "$@"
    done
    for _ in $(seq 1 100); do
        if "$FIVEFOLD" bench put --endpoints "$endpoints" --total 1 --time-limit 2s >/dev/null 2>&1; then
            echo "$endpoints"; return 0
        fi
        sleep 0.1
    done
    echo "$system did not start; the end of its logs:" >&2
    tail -n 5 "$WORK/$system"-*.log >&2
    exit 1
}

# machine_line DETAILS: the line each report opens with.
machine_line() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); etcd $(etcd --version | head -1 | awk '{print $3}'); $*"
}

# member_rss_mib PID FIELD: one process's VmHWM (peak) or VmRSS (now), MiB.
member_rss_mib() {
    local kb
    kb=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    echo $((${kb:-0} / 1024))
}

# rss_mib SYSTEM FIELD: the largest member's VmHWM (peak) or VmRSS (now), MiB.
rss_mib() {
    local largest=0 pid mib
    for pid in $(cat "$WORK/$1.pids"); do
        mib=$(member_rss_mib "$pid" "$2")
        largest=$((largest > mib ? largest : mib))
    done
    echo "$largest"
}
