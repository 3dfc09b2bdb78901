#!/usr/bin/env bash
# Nacre next to this machine's own limits, measured in the same run. The limits: fio
# (io_uring, O_DIRECT, one job at the same number of transfers in flight) on the file system
# the targets use, and iperf3 over loopback (4 streams, -l 1M). Nacre: `nacre bench`
# (IOR-shaped: 4 tasks, each with a queue of 8, so 32 transfers in flight as fio's iodepth)
# through local clusters of 1, 2 and 4 targets, files striped over every target,
# for sequential and random (-z) order with large (1 MiB) and small (4 KiB) transfers, each
# a write phase then a read phase that checks every byte. Each round runs fio, then Nacre on
# each cluster, case by case, then iperf3; the table gives medians over the rounds and ratios:
#   1 MiB rows, MiB/s:  nacre / min(fio, iperf3)
#   4 KiB rows, IOPS:   nacre / fio
# A cluster's targets are served by one `nacre serve` process with a worker per core, as a
# host serves its drives (decisions 0015, 0016); --process-per-target runs a process per
# target instead, as the quickstart does, and --server-workers N gives each server process N
# workers.
#
#   scripts/bench.sh [--size 1G] [--small-ops 16384] [--reps 5] [--seconds 3]
#                    [--tasks 4] [--queue-depth 8] [--targets "1 2 4"] [--record]
#                    [--process-per-target] [--server-workers N]
#
# --size        bytes each 1 MiB run writes and reads (and the size of fio's file)
# --small-ops   4 KiB transfers each 4 KiB run makes per phase (fio's 4 KiB runs are timed)
# --seconds     length of each timed fio run and of iperf3
# --record      also rewrites the bench section of docs/BENCHMARKS.md with the table
# About 3 minutes with the defaults on 2 cores; CLUSTER_PARENT picks the disk (/var/tmp).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"
. "$NACRE_ROOT/scripts/lib/baseline.sh"

size=1G small_ops=16384 reps=5 seconds=3 tasks=4 qd=8 target_counts="1 2 4" record=0
server_workers= one_server=1
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size=$2; shift 2 ;;
        --small-ops) small_ops=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --tasks) tasks=$2; shift 2 ;;
        --queue-depth) qd=$2; shift 2 ;;
        --targets) target_counts=$2; shift 2 ;;
        --record) record=1; shift ;;
        --server-workers) server_workers=$2; shift 2 ;;
        --one-server) one_server=1; shift ;;
        --process-per-target) one_server=0; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "bench.sh: unknown argument $1 (see --help)" ;;
    esac
done
for pair in "reps:$reps" "seconds:$seconds" "tasks:$tasks" "queue-depth:$qd" "small-ops:$small_ops" \
    ${server_workers:+"server-workers:$server_workers"}; do
    [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} ${pair#*:}: expected a whole number from 1"
done
for t in $target_counts; do
    [[ "$t" =~ ^[1-9][0-9]*$ ]] || die "--targets '$target_counts': expected whole numbers from 1"
done
need_packages fio:fio iperf3:iperf3 python3:python3 ss:iproute2 numfmt:coreutils
size_bytes=$(numfmt --from=iec "$size") || die "--size $size: not a size"
large=$((1 << 20)) small=4096
[ $((size_bytes % (tasks * large))) -eq 0 ] ||
    die "--size $size: must be a multiple of --tasks x 1 MiB ($tasks MiB)"
[ $((small_ops % tasks)) -eq 0 ] || die "--small-ops $small_ops: must be a multiple of --tasks ($tasks)"
in_flight=$((tasks * qd))

cargo build --release --quiet -p nacre-cli --manifest-path "$NACRE_ROOT/Cargo.toml"

work=$(mktemp -d "${CLUSTER_PARENT:-/var/tmp}/nacre-bench.XXXXXX")
results="$work/results"
fio_file="$work/fio.dat"
declare -A meta_of
for t in $target_counts; do
    CLUSTER_ONE_SERVER=$one_server CLUSTER_TARGET_ARGS=${server_workers:+"--workers $server_workers"} \
        CLUSTER_PARENT=$work cluster_start "$t" tcp
    meta_of[$t]=$NACRE_META
done
# cluster.sh stops every server it started; each cluster's directory is under $work.
trap 'cluster_stop; rm -rf "$work"' EXIT
trap 'echo "bench.sh: interrupted; stopping" >&2; cluster_stop; rm -rf "$work"; exit 130' INT TERM

# The cases: name, transfer size, order.
cases=("seq-1M $large seq" "rand-1M $large rand" "seq-4K $small seq" "rand-4K $small rand")

fio_run() { # rw bs -> prints "MiB/s IOPS"
    local rw=$1 bs=$2 extra=()
    [ "$bs" = "$small" ] && extra=(--time_based --runtime="$seconds")
    fio --name=baseline --filename="$fio_file" --ioengine=io_uring --direct=1 --fixedbufs \
        --registerfiles --iodepth="$in_flight" --bs="$bs" --size="$size_bytes" --rw="$rw" \
        --fallocate=none --randrepeat=0 --output-format=json "${extra[@]}" |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
k = "write" if j["write"]["io_bytes"] else "read"
print(j[k]["bw_bytes"] / 2**20, j[k]["iops"])'
}


nacre_run() { # targets transfer order -> prints "write_MiB/s write_IOPS read_MiB/s read_IOPS"
    local t=$1 xfer=$2 order=$3 block args=()
    if [ "$xfer" = "$large" ]; then block=$((size_bytes / tasks)); else block=$((small_ops / tasks * small)); fi
    [ "$order" = rand ] && args=(-z)
    NACRE_META=${meta_of[$t]} "$NACRE_BIN" bench -o /bench -N "$tasks" --queue-depth "$qd" \
        -t "$xfer" -b "$block" -s 1 -c -1 -S 1M "${args[@]}" --json >"$work/nacre.out" ||
        die "nacre bench failed on $t targets: $(tail -3 "$work/nacre.out")"
    python3 -c '
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["summary"]
print(*(s[a][k]["mean"] for a in ("write", "read") for k in ("bw_mib_s", "iops")))' "$work/nacre.out"
}

echo "bench.sh: $reps rounds; fio and nacre bench alternating, case by case; $in_flight transfers in flight" >&2
for ((r = 1; r <= reps; r++)); do
    for c in "${cases[@]}"; do
        read -r name xfer order <<<"$c"
        rw_write=write rw_read=read
        [ "$order" = rand ] && rw_write=randwrite rw_read=randread
        # Assignments, so that a failed run stops the script (set -e).
        v=$(fio_run "$rw_write" "$xfer"); echo "fio $name write $v" >>"$results"
        v=$(fio_run "$rw_read" "$xfer"); echo "fio $name read $v" >>"$results"
        for t in $target_counts; do
            v=$(nacre_run "$t" "$xfer" "$order")
            read -r wb wi rb ri <<<"$v"
            echo "nacre$t $name write $wb $wi" >>"$results"
            echo "nacre$t $name read $rb $ri" >>"$results"
        done
    done
    v=$(iperf3_loopback "$seconds" "$work/iperf.json" MiB); echo "iperf - - $v 0" >>"$results"
    rm -f "$fio_file"
    echo "  round $r of $reps done" >&2
done

workers=${server_workers:-$(nproc)}
[ "$workers" = 1 ] && workers="1 worker" || workers="$workers workers"
if [ $one_server = 1 ]; then
    layout="each cluster's targets one nacre serve process with $workers"
else
    layout="a nacre serve process per target, each with $workers"
fi
table=$(python3 - "$results" "$reps" "$size" "$small_ops" "$tasks" "$qd" "$target_counts" "$layout" <<'PY'
import statistics, sys
path, reps, size, small_ops, tasks, qd, targets, layout = sys.argv[1:9]
targets = targets.split()
runs = {}
for line in open(path):
    who, case, access, mib, iops = line.split()
    runs.setdefault((who, case, access), []).append((float(mib), float(iops)))
def med(who, case, access, i):
    return statistics.median(v[i] for v in runs[(who, case, access)])
iperf = med("iperf", "-", "-", 0)
head = f"| test (median of {reps}) | fio | iperf3 | limit |"
rule = "|---|---|---|---|"
for t in targets:
    word = "target" if t == "1" else "targets"
    head += f" nacre, {t} {word} | ratio |"
    rule += "---|---|"
print(head)
print(rule)
for case in ["seq-1M", "rand-1M", "seq-4K", "rand-4K"]:
    for access in ["write", "read"]:
        large = case.endswith("1M")
        i = 0 if large else 1
        fio = med("fio", case, access, i)
        limit = min(fio, iperf) if large else fio
        unit = "MiB/s" if large else "IOPS"
        cells = [f"{case} {access}, {unit}", f"{fio:,.0f}", f"{iperf:,.0f}" if large else "-", f"{limit:,.0f}"]
        for t in targets:
            n = med(f"nacre{t}", case, access, i)
            cells += [f"{n:,.0f}", f"{n / limit:.2f}"]
        print("| " + " | ".join(cells) + " |")
print()
print(f"1 MiB runs move {size} per phase, 4 KiB runs {small_ops} transfers per phase; nacre bench "
      f"-N {tasks} --queue-depth {qd} against fio --iodepth {int(tasks) * int(qd)}, files striped "
      f"over every target (1 MiB stripes), reads checked byte by byte; {layout}.")
PY
)
echo
echo "$table"
if [ $record = 1 ]; then
    machine="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), $(df -T "$work" | awk 'NR==2{print $2" on "$1}'), fio $(fio --version | sed 's/fio-//'), $(iperf3 --version | head -1 | cut -d' ' -f1-2)"
    python3 "$NACRE_ROOT/scripts/lib/record_section.py" "$NACRE_ROOT/docs/BENCHMARKS.md" bench \
        "bench: nacre bench through 1, 2 and 4 targets against fio and iperf3" "scripts/bench.sh" \
        "$machine" "$(date -u +%Y-%m-%d)" "$table"
    echo "recorded in docs/BENCHMARKS.md"
fi
