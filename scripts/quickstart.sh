#!/usr/bin/env bash
# Nacre's quickstart: builds Nacre, starts a metadata service and four targets as separate
# processes on temporary directories over loopback, writes a 2 GiB file striped over the
# four targets from 4 tasks with 8 transfers in flight each and reads it back with every
# byte verified (`nacre bench`), prints what it measured; then links a directory to an S3
# bucket of a local S3 server (moto, installed on first use), imports it, reads a file the
# first time (its bytes come from S3) and checks them against the bucket with Debian's aws
# CLI; and stops everything (also when interrupted with Ctrl-C).
#
# Environment: NACRE_QUICKSTART_SIZE (default 2G), NACRE_QUICKSTART_TARGETS (default 4),
# NACRE_QUICKSTART_S3 (0 skips the S3 part), CLUSTER_PARENT (where the temporary directories
# go; default /var/tmp).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"
. "$NACRE_ROOT/scripts/lib/s3.sh"

size=${NACRE_QUICKSTART_SIZE:-2G}
targets=${NACRE_QUICKSTART_TARGETS:-4}
need_packages python3:python3

echo "== building nacre (release)"
cargo build --release --quiet -p nacre-cli --manifest-path "$NACRE_ROOT/Cargo.toml"

s3=${NACRE_QUICKSTART_S3:-1}
if [ "$s3" = 1 ]; then
    echo "== starting a local S3 server (moto) for the data repository part"
    s3_tools
    # Started first: the metadata service's repository mover takes the credentials it sets.
    s3_start
fi
echo "== starting a metadata service and $targets targets under ${CLUSTER_PARENT:-/var/tmp}"
cluster_start "$targets" tcp
# cluster_start set traps of its own: these stop the S3 server too.
trap 'cluster_stop; s3_stop' EXIT
trap 'echo "nacre: interrupted; stopping" >&2; exit 130' INT TERM
echo "metadata service at $NACRE_META"
"$NACRE_BIN" df -H

echo
echo "== nacre bench: $size striped over every target, written, synced, read back and verified"
"$NACRE_BIN" bench --size "$size" --stripe-count -1 --stripe-size 1M --transfer 4M --threads 4 \
    --queue-depth 8 --rand4k-ops 20000

if [ "$s3" = 1 ]; then
    echo
    echo "== a data repository: s3://quickstart/data linked at /s3, imported, read on demand"
    aws=("$AWS_CLI" --endpoint-url "$S3_ENDPOINT")
    "${aws[@]}" s3api create-bucket --bucket quickstart >/dev/null
    sample="$CLUSTER_DIR/sample.bin"
    head -c $((24 << 20)) /dev/urandom >"$sample"
    "${aws[@]}" s3 cp --quiet "$sample" s3://quickstart/data/train/sample.bin
    echo "owned by 1000" >"$CLUSTER_DIR/notes.txt"
    "${aws[@]}" s3api put-object --bucket quickstart --key data/notes.txt \
        --body "$CLUSTER_DIR/notes.txt" \
        --metadata file-permissions=0100640,file-owner=1000,file-group=1000 >/dev/null
    "$NACRE_BIN" mkdir /s3
    "$NACRE_BIN" repo link /s3 s3://quickstart/data --endpoint "$S3_ENDPOINT" --import-now
    "$NACRE_BIN" repo list
    "$NACRE_BIN" ls -l /s3
    "$NACRE_BIN" hsm state /s3/train/sample.bin
    start=$(date +%s%N)
    "$NACRE_BIN" get /s3/train/sample.bin "$CLUSTER_DIR/sample.back"
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    "${aws[@]}" s3 cp --quiet s3://quickstart/data/train/sample.bin "$CLUSTER_DIR/sample.s3"
    cmp "$CLUSTER_DIR/sample.back" "$CLUSTER_DIR/sample.s3" || die "the first read differs from the object"
    echo "first read of the released 24 MiB file: $ms ms, bytes identical to aws s3 cp's"
    "$NACRE_BIN" hsm state /s3/train/sample.bin
    echo "a result computed in Nacre" >"$CLUSTER_DIR/result.txt"
    "$NACRE_BIN" put "$CLUSTER_DIR/result.txt" /s3/result.txt
    "$NACRE_BIN" chmod 640 /s3/result.txt
    "$NACRE_BIN" task export /s3
    "$NACRE_BIN" task list
    "$NACRE_BIN" hsm state /s3/result.txt
    echo "its data dropped from the targets again (a release; the next read fetches it):"
    "$NACRE_BIN" task release /s3/train/sample.bin
    "$NACRE_BIN" hsm state /s3/train/sample.bin
    echo "aws s3api head-object of the exported result:"
    "${aws[@]}" s3api head-object --bucket quickstart --key data/result.txt \
        --query '{size: ContentLength, metadata: Metadata}' --output json
fi
echo
echo "== stopping"
cluster_stop
s3_stop
trap - EXIT INT TERM
echo "done"
