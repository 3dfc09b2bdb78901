#!/usr/bin/env bash
# Runs fio (io_uring, O_DIRECT, fixed buffers, registered files) and Nacre's io store on the
# same file system with the same file size, block size and queue depth, alternating, and
# prints the median of each figure and the ratio Nacre/fio. Nacre runs twice per round: with
# I/O issued inline by its thread (the default) and with StoreConfig::offload_issue.
#
#   scripts/bench-io.sh [--dir DIR] [--size 1G] [--reps 3] [--seconds 5] [--record]
#
# --dir     where the files go (default: a fresh directory under /var/tmp, on the root disk)
# --record  also rewrites the io section of docs/BENCHMARKS.md with the table
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

dir="" size=1G reps=3 seconds=5 record=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --record) record=1; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "bench-io.sh: unknown argument $1 (see --help)" ;;
    esac
done
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || die "--reps $reps: expected a whole number from 1"

need_packages fio:fio python3:python3
cargo build --release --quiet -p nacre-benches --bin io-bench
iobench=$CARGO_TARGET_DIR/release/io-bench

own_dir=0
if [ -z "$dir" ]; then
    dir=$(mktemp -d /var/tmp/nacre-bench-io.XXXXXX)
    own_dir=1
fi
mkdir -p "$dir"
results=$(mktemp /tmp/nacre-bench-io-results.XXXXXX)
cleanup() {
    rm -f "$results"
    if [ $own_dir = 1 ]; then rm -rf "$dir"; else rm -rf "$dir/fio.dat" "$dir/nacre-target"; fi
}
trap cleanup EXIT INT TERM

fio_run() { # name rw bs  -> prints "MBps iops"
    local rw=$2 bs=$3 extra=()
    [ "$rw" = randread ] && extra=(--time_based --runtime="$seconds")
    [ "$rw" = write ] && rm -f "$dir/fio.dat"
    fio --name="$1" --filename="$dir/fio.dat" --ioengine=io_uring --direct=1 --fixedbufs \
        --registerfiles --iodepth=32 --bs="$bs" --size="$size" --rw="$rw" --fallocate=none \
        --output-format=json "${extra[@]}" |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if j["write"]["io_bytes"] else "read"; print(j[k]["bw_bytes"]/1e6, j[k]["iops"])'
}

nacre_run() { # mode bs [--offload] -> prints "MBps iops"
    "$iobench" --dir "$dir/nacre-target" --mode "$1" --bs "$2" --size "$size" --qd 32 --seconds "$seconds" ${3:-} |
        sed -E 's/.*MBps=([0-9.]+) iops=([0-9.]+).*/\1 \2/'
}

echo "bench-io: $reps rounds of fio and nacre, alternating, file size $size, queue depth 32" >&2
for r in $(seq 1 "$reps"); do
    echo "round $r/$reps" >&2
    echo "fio seq-write-1M $(fio_run w write 1M)" >>"$results"
    echo "nacre seq-write-1M $(nacre_run write 1M)" >>"$results"
    echo "offload seq-write-1M $(nacre_run write 1M --offload)" >>"$results"
    echo "fio seq-read-1M $(fio_run r read 1M)" >>"$results"
    echo "nacre seq-read-1M $(nacre_run read 1M)" >>"$results"
    echo "offload seq-read-1M $(nacre_run read 1M --offload)" >>"$results"
    echo "fio rand-read-4K $(fio_run rr randread 4k)" >>"$results"
    echo "nacre rand-read-4K $(nacre_run randread 4k)" >>"$results"
    echo "offload rand-read-4K $(nacre_run randread 4k --offload)" >>"$results"
done

table=$(python3 - "$results" "$reps" "$size" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, test, mbps, iops = line.split()
    rows.setdefault(test, {}).setdefault(who, []).append((float(mbps), float(iops)))
print(f"| test (QD32, {sys.argv[3]} file, median of {sys.argv[2]}) | fio | nacre | nacre/fio | nacre, offload_issue | offload/fio |")
print("|---|---|---|---|---|---|")
for test in ["seq-write-1M", "seq-read-1M", "rand-read-4K"]:
    r = rows[test]
    k = 1 if test.startswith("rand") else 0
    unit = "IOPS" if k else "MB/s"
    f = statistics.median(v[k] for v in r["fio"])
    n = statistics.median(v[k] for v in r["nacre"])
    o = statistics.median(v[k] for v in r["offload"])
    print(f"| {test} | {f:,.0f} {unit} | {n:,.0f} {unit} | {n / f:.2f} | {o:,.0f} {unit} | {o / f:.2f} |")
PY
)
echo "$table"

if [ $record = 1 ]; then
    machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -T "$dir" | awk 'NR==2{print $2" on "$1}'), fio $(fio --version | sed 's/fio-//')"
    python3 "$NACRE_ROOT/scripts/lib/record_section.py" "$NACRE_ROOT/docs/BENCHMARKS.md" bench-io \
        "io: the object store against fio" "scripts/bench-io.sh" "$machine" "$(date -u +%Y-%m-%d)" "$table"
    echo "bench-io: recorded in docs/BENCHMARKS.md" >&2
fi
