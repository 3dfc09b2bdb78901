#!/usr/bin/env bash
# Nacre's quickstart: builds Nacre, starts a metadata service and four targets as separate
# processes on temporary directories over loopback, writes a 2 GiB file striped over the
# four targets from 4 tasks with 8 transfers in flight each and reads it back with every
# byte verified (`nacre bench`), prints what it measured, and stops everything (also when
# interrupted with Ctrl-C).
#
# Environment: NACRE_QUICKSTART_SIZE (default 2G), NACRE_QUICKSTART_TARGETS (default 4),
# CLUSTER_PARENT (where the temporary directories go; default /var/tmp).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"

size=${NACRE_QUICKSTART_SIZE:-2G}
targets=${NACRE_QUICKSTART_TARGETS:-4}
need_packages python3:python3

echo "== building nacre (release)"
cargo build --release --quiet -p nacre-cli --manifest-path "$NACRE_ROOT/Cargo.toml"

echo "== starting a metadata service and $targets targets under ${CLUSTER_PARENT:-/var/tmp}"
cluster_start "$targets" tcp
echo "metadata service at $NACRE_META"
"$NACRE_BIN" df -H

echo
echo "== nacre bench: $size striped over every target, written, synced, read back and verified"
"$NACRE_BIN" bench --size "$size" --stripe-count -1 --stripe-size 1M --transfer 4M --threads 4 \
    --queue-depth 8 --rand4k-ops 20000

echo
echo "== stopping"
cluster_stop
trap - EXIT INT TERM
echo "done"
