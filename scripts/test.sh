#!/usr/bin/env bash
# Installs what Nacre's tests need when it is missing, then runs every check a landing needs:
# cargo fmt --check, cargo clippy (warnings are errors), cargo test for the whole workspace,
# the C ABI's tests (C programs under valgrind, the MPI example under mpirun; c-test.sh),
# the RDMA tests on a real Soft-RoCE device (scripts/rdma-test.sh boots a small VM), the
# storage and engine tests again on Debian 12's stock kernel in that VM (kernel-test.sh), and a
# short smoke run of the quickstart and of the io and net benchmarks (so the scripts cannot
# rot).
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-smoke skip the quickstart smoke run
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$NACRE_ROOT"

smoke=1
for arg in "$@"; do
    case "$arg" in
        --no-smoke) smoke=0 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "test.sh: unknown argument $arg (see --help)" ;;
    esac
done

command -v cargo >/dev/null || die "cargo is not on the PATH; install Rust (rustup) first"
# cc for crates that build C, mount/umount for the ENOSPC test, fio for the io benchmark
# script, python3 for the scripts' helpers.
need_packages cc:gcc mount:mount python3:python3 fio:fio
# A real S3 server (moto) and Debian's aws CLI for the data repository tests, which must run.
. "$NACRE_ROOT/scripts/lib/s3.sh"
s3_tools
export NACRE_MOTO_SERVER="$MOTO_SERVER" NACRE_REQUIRE_S3=1

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "C ABI: C tests under valgrind, the C and MPI examples (scripts/c-test.sh)"
scripts/c-test.sh

step "RDMA: the transport's and the engine's tests on a real Soft-RoCE device in a VM (scripts/rdma-test.sh)"
scripts/rdma-test.sh

step "Debian 12's stock kernel (6.1): the storage and engine tests in the VM (scripts/kernel-test.sh)"
scripts/kernel-test.sh

step "cargo clippy -p nacre-transport -p nacre --features rdma --all-targets -- -D warnings"
cargo clippy -p nacre-transport -p nacre --features nacre-transport/rdma,nacre/rdma --all-targets \
    --quiet -- -D warnings

if [ $smoke = 1 ]; then
    step "quickstart smoke run (small sizes)"
    NACRE_QUICKSTART_SIZE=256M scripts/quickstart.sh
    step "io benchmark smoke run (small sizes)"
    scripts/bench-io.sh --size 64M --reps 1 --seconds 1
    step "net benchmark smoke run (one short round)"
    scripts/bench-net.sh --reps 1 --seconds 1
    step "S3 benchmark smoke run (one small round)"
    scripts/bench-s3.sh --reps 1 --large-mib 16 --small 10 --small-kib 16
    leaked=$(s3_leaked)
    [ -z "$leaked" ] || die "moto servers left running by the S3 scripts or tests: $leaked"
    step "side-by-side benchmark smoke run (the same build twice, small sizes)"
    scripts/bench-ab.sh "$CARGO_TARGET_DIR/release/nacre" "$CARGO_TARGET_DIR/release/nacre" \
        --reps 1 --small-ops 1024 --large-mib 64
fi

step "all checks passed"
