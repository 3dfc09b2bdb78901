#!/usr/bin/env bash
# Runs iperf3 and Nacre's TCP transport over loopback in the same run, alternating, and prints
# medians and ratios:
#   - bulk throughput with 1 MiB writes on one connection (also with SEND_ZC) and on four
#     (iperf3 -l 1M, -P 4);
#   - the round trip of a 4 KiB request and 4 KiB reply against a plain blocking-socket
#     ping-pong of the same size.
# Nacre runs both of its TCP paths: the engine's (`net-bench loop-*`: one thread drives all
# of a side's connections, PipeConn to StreamConn, as the client's queues and the target
# workers do) and the blocking connections (a thread each, as the metadata path uses).
# Every client runs on CPU 0 and every server on CPU 1 (taskset), baselines and Nacre alike:
# unpinned, where the scheduler put the threads swung one test from 28 to 48 Gbit/s in a run.
#
#   scripts/bench-net.sh [--reps 3] [--seconds 3] [--record]
#
# --record  also rewrites the net section of docs/BENCHMARKS.md with the table
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

reps=3 seconds=3 record=0
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --record) record=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "bench-net.sh: unknown argument $1 (see --help)" ;;
    esac
done
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps $reps: expected a whole number from 1"

need_packages iperf3:iperf3 python3:python3 ss:iproute2 taskset:util-linux
cargo build --release --quiet -p nacre-benches --bin net-bench
nb=$CARGO_TARGET_DIR/release/net-bench

work=$(mktemp -d /tmp/nacre-bench-net.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The CPUs clients and servers run on (the same for every test); one CPU for both on a
# machine that has only one.
client_cpu=0
server_cpu=$(( $(nproc) > 1 ? 1 : 0 ))
on_client=(taskset -c "$client_cpu")
on_server=(taskset -c "$server_cpu")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server OUTFILE CMD... — starts CMD in the background, waits (10 s at most) for its
# "listening on ADDRESS" line and sets $addr to ADDRESS. Not for $(...): the pid must reach
# the cleanup trap.
start_server() {
    local out=$1; shift
    "$@" >"$out" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/^listening on //p' "$out" | head -1)
        [ -n "$addr" ] && return 0
        sleep 0.1
    done
    die "server did not start: $(cat "$out")"
}

# wait_listening PORT — waits (10 s at most) until something listens on 127.0.0.1:PORT.
wait_listening() {
    for _ in $(seq 1 100); do
        ss -ltnH "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}

iperf() { # streams -> Gbit/s
    local port; port=$(free_port)
    "${on_server[@]}" timeout $((seconds + 30)) iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    local spid=$!
    wait_listening "$port"
    "${on_client[@]}" timeout $((seconds + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -l 1M -P "$1" -J >"$work/iperf.json" 2>&1 || true
    wait "$spid" 2>/dev/null || true
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
if j.get("error"):
    sys.exit("iperf3: " + j["error"])
print(j["end"]["sum_received"]["bits_per_second"] / 1e9)' "$work/iperf.json"
}

results=$work/results
start_server "$work/server.out" "${on_server[@]}" "$nb" server --listen tcp://127.0.0.1:0 --seconds 3600
server=$addr
start_server "$work/loop-server.out" "${on_server[@]}" "$nb" loop-server --listen tcp://127.0.0.1:0 --seconds 3600
loop_server=$addr
gbps() { sed -E 's/.*gbps=([0-9.]+).*/\1/'; }
median_us() { sed -E 's/.*median_us=([0-9.]+).*/\1/'; }
echo "bench-net: $reps rounds of iperf3 and nacre over loopback, alternating" >&2
for r in $(seq 1 "$reps"); do
    echo "round $r/$reps" >&2
    echo "base bulk-1 $(iperf 1)" >>"$results"
    echo "loop bulk-1 $("${on_client[@]}" "$nb" loop-bulk --connect "$loop_server" --conns 1 --seconds "$seconds" | gbps)" >>"$results"
    echo "nacre bulk-1 $("${on_client[@]}" "$nb" bulk --connect "$server" --conns 1 --seconds "$seconds" | gbps)" >>"$results"
    echo "nacre-zc bulk-1 $("${on_client[@]}" "$nb" bulk --connect "$server" --conns 1 --seconds "$seconds" --zc | gbps)" >>"$results"
    echo "base bulk-4 $(iperf 4)" >>"$results"
    echo "loop bulk-4 $("${on_client[@]}" "$nb" loop-bulk --connect "$loop_server" --conns 4 --seconds "$seconds" | gbps)" >>"$results"
    echo "nacre bulk-4 $("${on_client[@]}" "$nb" bulk --connect "$server" --conns 4 --seconds "$seconds" | gbps)" >>"$results"
    start_server "$work/plain-$r.out" "${on_server[@]}" "$nb" plain-server --listen 127.0.0.1:0 --size 4K --seconds 600
    plain=$addr
    echo "base rtt-4K $("${on_client[@]}" "$nb" plain-pingpong --connect "$plain" --size 4K --seconds "$seconds" | median_us)" >>"$results"
    echo "loop rtt-4K $("${on_client[@]}" "$nb" loop-pingpong --connect "$loop_server" --size 4K --seconds "$seconds" | median_us)" >>"$results"
    echo "nacre rtt-4K $("${on_client[@]}" "$nb" pingpong --connect "$server" --size 4K --seconds "$seconds" | median_us)" >>"$results"
done

table=$(python3 - "$results" "$reps" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, test, value = line.split()
    rows.setdefault(test, {}).setdefault(who, []).append(float(value))
med = lambda t, w: statistics.median(rows[t][w])
paths = [("loop", "engine path (one thread a side)"), ("nacre", "blocking connections (a thread each)"), ("nacre-zc", "blocking, with SEND_ZC (not the default)")]
print(f"| test (loopback, clients on CPU 0, servers on CPU 1, median of {sys.argv[2]}) | baseline | nacre | ratio | goal |")
print("|---|---|---|---|---|")
for test, label in [("bulk-1", "bulk, 1 MiB writes, 1 connection vs iperf3 -l 1M"), ("bulk-4", "bulk, 1 MiB writes, 4 connections vs iperf3 -l 1M -P 4")]:
    b = med(test, "base")
    for who, path in paths:
        if who in rows[test]:
            n = med(test, who)
            goal = "" if who == "nacre-zc" else ">= 0.95"
            print(f"| {label}: {path} | {b:.1f} Gbit/s | {n:.1f} Gbit/s | {n / b:.2f} | {goal} |")
b = med("rtt-4K", "base")
for who, path in paths:
    if who in rows["rtt-4K"]:
        n = med("rtt-4K", who)
        print(f"| round trip, 4 KiB each way, median vs plain blocking sockets: {path} | {b:.1f} us | {n:.1f} us | {n / b:.2f} | <= 1.2 |")
PY
)
echo "$table"

if [ $record = 1 ]; then
    machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(iperf3 --version | head -1 | cut -d' ' -f1-2)"
    python3 "$NACRE_ROOT/scripts/lib/record_section.py" "$NACRE_ROOT/docs/BENCHMARKS.md" bench-net \
        "net: the TCP transport against iperf3 and plain sockets" "scripts/bench-net.sh" "$machine" "$(date -u +%Y-%m-%d)" "$table"
    echo "bench-net: recorded in docs/BENCHMARKS.md" >&2
fi
