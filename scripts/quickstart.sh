#!/usr/bin/env bash
# Nacre's quickstart. Until the engine (client, target and metadata servers) lands, it
# measures the storage layer on this machine: it builds Nacre, then runs fio and Nacre's
# io_uring object store side by side on a temporary directory and prints their figures and
# ratios (1 MiB sequential write and read, 4 KiB random read, queue depth 32).
#
# Environment: NACRE_QUICKSTART_SIZE (default 1G), NACRE_QUICKSTART_SECONDS (default 3),
# NACRE_QUICKSTART_DIR (default: a fresh directory under /var/tmp, removed at the end).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

size=${NACRE_QUICKSTART_SIZE:-1G}
seconds=${NACRE_QUICKSTART_SECONDS:-3}
args=(--size "$size" --reps 1 --seconds "$seconds")
[ -n "${NACRE_QUICKSTART_DIR:-}" ] && args+=(--dir "$NACRE_QUICKSTART_DIR")

echo "Nacre quickstart: the io_uring object store against fio on this machine ($size file)"
exec "$NACRE_ROOT/scripts/bench-io.sh" "${args[@]}"
