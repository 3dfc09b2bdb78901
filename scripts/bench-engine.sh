#!/usr/bin/env bash
# The engine end to end against this machine's limits, in one run: fio (io_uring, O_DIRECT,
# QD32) on the file system the targets use, iperf3 over loopback (4 streams, -l 1M), and
# `nacre bench` through a metadata service and four target processes (a file striped over
# all four, 4 MiB transfers from 4 threads; then random 4 KiB reads from 32 threads).
# Rounds alternate baseline and Nacre; medians and ratios are printed:
#   sequential write and read: Nacre / min(fio, iperf3)   (goal >= 0.85)
#   random 4 KiB read IOPS:     Nacre / fio               (goal >= 0.70)
#
#   scripts/bench-engine.sh [--size 2G] [--reps 3] [--seconds 5] [--record]
# --record rewrites the engine section of docs/BENCHMARKS.md.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"
. "$NACRE_ROOT/scripts/lib/baseline.sh"

size=2G reps=3 seconds=5 record=0
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --record) record=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "bench-engine.sh: unknown argument $1 (see --help)" ;;
    esac
done
need_packages fio:fio iperf3:iperf3 python3:python3 ss:iproute2
cargo build --release --quiet -p nacre-cli --manifest-path "$NACRE_ROOT/Cargo.toml"

cluster_start 4 tcp
results="$CLUSTER_DIR/results"
fio_file="$CLUSTER_DIR/fio.dat"

fio_run() { # rw bs -> prints "MBps iops"
    local rw=$1 bs=$2 extra=()
    [ "$rw" = randread ] && extra=(--time_based --runtime="$seconds")
    fio --name=baseline --filename="$fio_file" --ioengine=io_uring --direct=1 --fixedbufs \
        --registerfiles --iodepth=32 --bs="$bs" --size="$size" --rw="$rw" --fallocate=none \
        --output-format=json "${extra[@]}" |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if j["write"]["io_bytes"] else "read"; print(j[k]["bw_bytes"]/1e6, j[k]["iops"])'
}


rand_ops=$((seconds * 20000))
nacre_run() { # -> prints "write_MBps read_MBps rand_iops"
    "$NACRE_BIN" bench --size "$size" --transfer 4M --threads 4 --stripe-count -1 --json >"$CLUSTER_DIR/seq.out"
    "$NACRE_BIN" bench --size 512M --transfer 4M --threads 32 --stripe-count -1 \
        --rand4k-ops "$rand_ops" --json >"$CLUSTER_DIR/rand.out"
    python3 -c '
import json, sys
seq = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rnd = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(seq["write_mib_s"] * 1.048576, seq["read_mib_s"] * 1.048576, rnd["rand4k_iops"])' \
        "$CLUSTER_DIR/seq.out" "$CLUSTER_DIR/rand.out"
}

echo "bench-engine: $reps rounds, alternating fio, iperf3 and nacre bench; $size files" >&2
for ((r = 1; r <= reps; r++)); do
    echo "fio-write $(fio_run write 1M)" >>"$results"
    echo "nacre $(nacre_run)" >>"$results"
    echo "fio-read $(fio_run read 1M)" >>"$results"
    echo "fio-rand $(fio_run randread 4k)" >>"$results"
    echo "iperf $(iperf3_loopback "$seconds" "$CLUSTER_DIR/iperf.json" MB)" >>"$results"
    rm -f "$fio_file"
    echo "  round $r of $reps done" >&2
done

table=$(python3 - "$results" "$reps" "$size" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *vals = line.split()
    rows.setdefault(name, []).append([float(v) for v in vals])
med = lambda name, i: statistics.median(r[i] for r in rows[name])
fw, fr, fi = med("fio-write", 0), med("fio-read", 0), med("fio-rand", 1)
ip = med("iperf", 0)
nw, nr, ni = med("nacre", 0), med("nacre", 1), med("nacre", 2)
print(f"| test (median of {sys.argv[2]}, {sys.argv[3]} file) | baseline | nacre | ratio | goal |")
print("|---|---|---|---|---|")
print(f"| seq write, MB/s (vs min of fio {fw:.0f}, iperf3 {ip:.0f}) | {min(fw, ip):.0f} | {nw:.0f} | {nw / min(fw, ip):.2f} | >= 0.85 |")
print(f"| seq read, MB/s (vs min of fio {fr:.0f}, iperf3 {ip:.0f}) | {min(fr, ip):.0f} | {nr:.0f} | {nr / min(fr, ip):.2f} | >= 0.85 |")
print(f"| rand 4 KiB read, IOPS (vs fio QD32) | {fi:.0f} | {ni:.0f} | {ni / fi:.2f} | >= 0.70 |")
PY
)
echo
echo "$table"
if [ $record = 1 ]; then
    machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -T "$CLUSTER_DIR" | awk 'NR==2{print $2" on "$1}'), fio $(fio --version | sed 's/fio-//'), $(iperf3 --version | head -1 | cut -d' ' -f1-2)"
    python3 "$NACRE_ROOT/scripts/lib/record_section.py" "$NACRE_ROOT/docs/BENCHMARKS.md" bench-engine \
        "engine: nacre bench through four targets against fio and iperf3" "scripts/bench-engine.sh" \
        "$machine" "$(date -u +%Y-%m-%d)" "$table"
    echo "recorded in docs/BENCHMARKS.md"
fi
