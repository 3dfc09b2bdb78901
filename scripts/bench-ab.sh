#!/usr/bin/env bash
# Two builds of nacre side by side: for each round, a local cluster (one `nacre serve` of
# four targets) is started with build A, then with build B, and each runs the same
# `nacre bench` cases (4 tasks, 8 transfers in flight each, files striped over every target
# in 1 MiB stripes): random 4 KiB and sequential 1 MiB, a write phase then a read phase
# that checks every byte. Prints each run, then medians and B/A ratios. For a change that
# must not cost speed: build the old commit into another target directory (a git worktree),
# then compare.
#
#   scripts/bench-ab.sh OLD_NACRE NEW_NACRE [--reps N] [--small-ops N] [--large-mib N]
#     --reps       rounds (default 6)
#     --small-ops  4 KiB transfers per phase (default 32768)
#     --large-mib  MiB per 1 MiB phase (default 1024)
# CLUSTER_PARENT picks the disk (/var/tmp).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"

[ $# -ge 2 ] || die "bench-ab.sh: two nacre binaries are needed (see --help)"
case "$1" in -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
old=$1 new=$2; shift 2
reps=6 small_ops=32768 large_mib=1024
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) reps=$2; shift 2 ;;
        --small-ops) small_ops=$2; shift 2 ;;
        --large-mib) large_mib=$2; shift 2 ;;
        *) die "bench-ab.sh: unknown argument $1 (see --help)" ;;
    esac
done
for bin in "$old" "$new"; do [ -x "$bin" ] || die "bench-ab.sh: $bin is not an executable"; done
need_packages python3:python3
work=$(mktemp -d "${CLUSTER_PARENT:-/var/tmp}/nacre-bench-ab.XXXXXX")
trap 'cluster_stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
results=$work/results

one_build() { # binary label
    local bin=$1 label=$2 xfer ops order args
    NACRE_BIN=$bin CLUSTER_ONE_SERVER=1 CLUSTER_PARENT=$work cluster_start 4 tcp >/dev/null
    for c in "4096 rand $small_ops" "1048576 seq $large_mib"; do
        read -r xfer order ops <<<"$c"
        args=(); [ "$order" = rand ] && args=(-z)
        NACRE_META=$NACRE_META "$bin" bench -o /bench-ab -N 4 --queue-depth 8 -t "$xfer" \
            -b $((ops / 4 * xfer)) -s 1 -c -1 -S 1M "${args[@]}" --json >"$work/out" ||
            die "nacre bench failed with $bin: $(tail -3 "$work/out")"
        python3 -c '
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["summary"]
print(sys.argv[2], sys.argv[3], *("%.0f" % s[a][k]["mean"] for a in ("write", "read") for k in ("bw_mib_s", "iops")))
' "$work/out" "$label" "$xfer" | tee -a "$results"
    done
    cluster_stop >/dev/null
}

echo "label xfer write_MiB/s write_IOPS read_MiB/s read_IOPS"
for ((r = 1; r <= reps; r++)); do
    one_build "$old" A
    one_build "$new" B
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
cases = [("4096", 3, "random 4 KiB writes (IOPS)"), ("4096", 5, "random 4 KiB reads (IOPS)"),
         ("1048576", 2, "sequential 1 MiB writes (MiB/s)"), ("1048576", 4, "sequential 1 MiB reads (MiB/s)")]
print("| case | runs each | A | B | B / A |\n|---|---|---|---|---|")
for xfer, col, name in cases:
    a = [float(r[col]) for r in rows if r[0] == "A" and r[1] == xfer]
    b = [float(r[col]) for r in rows if r[0] == "B" and r[1] == xfer]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {len(a)} | {ma:,.0f} | {mb:,.0f} | {mb / ma:.2f} |")
PY
