#!/usr/bin/env bash
# Nacre's S3 data repositories against the aws CLI, side by side on one S3 server (moto on
# loopback, started here) and one local cluster (a metadata service running the repository
# mover, four targets in one server process). Each round, alternating:
#   aws      `aws s3 cp --recursive` of the data set (many small files and one large) down
#            to a local directory
#   nacre    `nacre repo link --import-now` of the same prefix, then `nacre task restore` of
#            every file (their bytes from S3 into the targets)
#   aws1     `aws s3 cp` of the large object alone (ranged, parallel GETs)
#   nacre1   the first read of that object's released file (`nacre get` of it)
#   awsup    `aws s3 cp --recursive` of the local data set up to a new prefix
#   nacreup  `nacre task export` of the same files, written into Nacre beforehand (not timed)
#            under a directory linked to another new prefix
# Prints every run, then medians and aws/nacre ratios (above 1: Nacre faster).
#
#   scripts/bench-s3.sh [--reps N] [--large-mib N] [--small N] [--small-kib N]
#     defaults: 3 rounds, a 256 MiB large file, 200 small files of 64 KiB
# CLUSTER_PARENT picks the disk (/var/tmp).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"
. "$NACRE_ROOT/scripts/lib/s3.sh"

reps=3 large_mib=256 small=200 small_kib=64
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) reps=$2; shift 2 ;;
        --large-mib) large_mib=$2; shift 2 ;;
        --small) small=$2; shift 2 ;;
        --small-kib) small_kib=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "bench-s3.sh: unknown argument $1 (see --help)" ;;
    esac
done
need_packages python3:python3
s3_tools
cargo build --release --quiet -p nacre-cli
work=$(mktemp -d "${CLUSTER_PARENT:-/var/tmp}/nacre-bench-s3.XXXXXX")
trap 's3_stop; rm -rf "$work"' EXIT
s3_start
CLUSTER_ONE_SERVER=1 CLUSTER_PARENT=$work cluster_start 4 tcp >/dev/null
# cluster_start set traps of its own: these stop moto too.
trap 'cluster_stop >/dev/null 2>&1 || true; s3_stop; rm -rf "$work"' EXIT
trap 'echo "nacre: interrupted; stopping" >&2; exit 130' INT TERM
aws=("$AWS_CLI" --endpoint-url "$S3_ENDPOINT")

echo "== the data set: $small files of $small_kib KiB and one of $large_mib MiB"
mkdir -p "$work/set/small"
for ((i = 0; i < small; i++)); do
    head -c $((small_kib << 10)) /dev/urandom >"$work/set/small/f$i"
done
head -c $((large_mib << 20)) /dev/urandom >"$work/set/large.bin"
"${aws[@]}" s3api create-bucket --bucket bench >/dev/null
"${aws[@]}" s3 cp --quiet --recursive "$work/set" s3://bench/set
results=$work/results
now() { date +%s%N; }
record() { # case start
    echo "$1 $(( ($(now) - $2) / 1000000 ))" | tee -a "$results"
}

echo "case ms"
for ((r = 1; r <= reps; r++)); do
    rm -rf "$work/down"
    t=$(now); "${aws[@]}" s3 cp --quiet --recursive s3://bench/set "$work/down"; record aws "$t"
    rm -rf "$work/down"
    "$NACRE_BIN" mkdir "/r$r"
    t=$(now)
    "$NACRE_BIN" repo link "/r$r" s3://bench/set --endpoint "$S3_ENDPOINT" --import-now >/dev/null
    files=("/r$r/large.bin")
    for ((i = 0; i < small; i++)); do files+=("/r$r/small/f$i"); done
    "$NACRE_BIN" task restore "${files[@]}" >/dev/null
    record nacre "$t"
    cmp <("$NACRE_BIN" get "/r$r/large.bin" -) "$work/set/large.bin" || die "the restored file differs"
    "$NACRE_BIN" repo unlink "/r$r" >/dev/null

    t=$(now); "${aws[@]}" s3 cp --quiet s3://bench/set/large.bin "$work/large.down"; record aws1 "$t"
    rm -f "$work/large.down"
    "$NACRE_BIN" mkdir "/f$r"
    "$NACRE_BIN" repo link "/f$r" s3://bench/set --endpoint "$S3_ENDPOINT" --import-now >/dev/null
    t=$(now); "$NACRE_BIN" get "/f$r/large.bin" "$work/large.nacre"; record nacre1 "$t"
    cmp "$work/large.nacre" "$work/set/large.bin" || die "the first read differs"
    rm -f "$work/large.nacre"
    "$NACRE_BIN" repo unlink "/f$r" >/dev/null

    t=$(now); "${aws[@]}" s3 cp --quiet --recursive "$work/set" "s3://bench/up-aws-$r"; record awsup "$t"
    "$NACRE_BIN" mkdir "/u$r"
    "$NACRE_BIN" repo link "/u$r" "s3://bench/up-nacre-$r" --endpoint "$S3_ENDPOINT" >/dev/null
    "$NACRE_BIN" mkdir "/u$r/small"
    "$NACRE_BIN" put "$work/set/large.bin" "/u$r/large.bin"
    for ((i = 0; i < small; i++)); do "$NACRE_BIN" put "$work/set/small/f$i" "/u$r/small/f$i"; done
    t=$(now)
    "$NACRE_BIN" task export "/u$r" >"$work/export.out" ||
        { cat "$work/export.out" >&2; die "the export of round $r failed (its report is above)"; }
    record nacreup "$t"
    cmp <("${aws[@]}" s3 cp --quiet "s3://bench/up-nacre-$r/large.bin" -) "$work/set/large.bin" \
        || die "the exported large file differs"
    "$NACRE_BIN" repo unlink "/u$r" >/dev/null
    "${aws[@]}" s3 rm --quiet --recursive "s3://bench/up-aws-$r"
    "${aws[@]}" s3 rm --quiet --recursive "s3://bench/up-nacre-$r"
done
python3 - "$results" "$small" "$small_kib" "$large_mib" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = lambda case: statistics.median(float(ms) for c, ms in rows if c == case)
small, kib, mib = sys.argv[2:5]
print(f"\n| case | runs | aws (ms) | nacre (ms) | aws / nacre |\n|---|---|---|---|---|")
for name, a, n in (
    (f"download {small} x {kib} KiB + {mib} MiB (nacre: import + restore)", "aws", "nacre"),
    (f"first read of a released {mib} MiB file (aws: ranged parallel GET)", "aws1", "nacre1"),
    (f"upload {small} x {kib} KiB + {mib} MiB (nacre: export)", "awsup", "nacreup"),
):
    runs = sum(1 for c, _ in rows if c == a)
    print(f"| {name} | {runs} | {med(a):,.0f} | {med(n):,.0f} | {med(a) / med(n):.2f} |")
PY
