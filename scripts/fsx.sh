#!/usr/bin/env bash
# The model-based exercisers and the geometry sweep, run longer than CI runs them (issue 20;
# docs/decisions/0017): the Rust exerciser (core/tests/exerciser.rs: blocking calls on four
# layouts, the queue at depths 1 to 4096, a poll-only caller), the sweep of every layout
# geometry and transfer size (core/tests/sweep.rs), the namespace against Linux
# (core/tests/namespace_oracle.rs, 10 operations per exerciser operation), and the store's and
# a target process's crash tests, for --rounds rounds with a new seed per round (printed;
# --seed replays one).
#
#   scripts/fsx.sh [--ops N] [--rounds R] [--seed S]
#     --ops N     operations per layout of the blocking exerciser (default 20000; CI: 1500)
#     --rounds R  rounds (default 3)
#     --seed S    one round with this seed (replays a failure)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$NACRE_ROOT"

ops=20000 rounds=3 seed=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ops) [ $# -ge 2 ] || die "fsx.sh: --ops needs a number"; ops=$2; shift 2 ;;
        --rounds) [ $# -ge 2 ] || die "fsx.sh: --rounds needs a number"; rounds=$2; shift 2 ;;
        --seed) [ $# -ge 2 ] || die "fsx.sh: --seed needs a number"; seed=$2; rounds=1; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "fsx.sh: unknown argument $1 (see --help)" ;;
    esac
done

for round in $(seq 1 "$rounds"); do
    round_seed=${seed:-$(( $(date +%s%N) % 9000000000000000000 | 1 ))}
    echo "== round $round of $rounds: seed $round_seed, $ops operations per layout"
    # The first failure stops the script; the round's seed above replays it.
    NACRE_TEST_SEED=$round_seed NACRE_FSX_OPS=$ops NACRE_NS_OPS=$((ops * 10)) \
        cargo test --release --quiet -p nacre --test exerciser --test sweep --test namespace_oracle
    cargo test --release --quiet -p nacre-io --test crash
    cargo test --release --quiet -p nacre-cli --test processes -- a_target_killed_mid
done
echo "== fsx.sh: $rounds rounds passed"
