#!/usr/bin/env bash
# Runs the storage and engine tests (the io crate's and core's, without RDMA) on Debian 12's
# stock kernel (6.1), in the VM of scripts/rdma-vm/run.sh, as well as on this machine's own
# kernel (scripts/test.sh's cargo test). Debian 12 users run 6.1, which lacks io_uring
# operations and file system features newer kernels have (IORING_OP_FTRUNCATE came in 6.9,
# O_DIRECT on tmpfs in 6.6); this is where that shows. The targets' files go on an ext4 file
# system on a RAM disk inside the VM. Fails when any test fails.
#
#   scripts/kernel-test.sh [TEST-NAME-FILTER...]   (extra arguments go to every test binary)
#
# The decoders' property tests and the metadata store's tests run only on this machine: they
# are pure computation and redb's plain file I/O, nothing the kernel's version changes, and on
# the VM's emulated CPU they took a quarter of its time.
#
# Environment: NACRE_KERNEL_TEST_TIMEOUT_S bounds the VM run (default 900 seconds).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$NACRE_ROOT"

case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
timeout_s=${NACRE_KERNEL_TEST_TIMEOUT_S:-900}
# Test binaries (by name, before cargo's hash) that hold nothing the kernel's version changes.
host_only='^(decoders|meta_store)-[0-9a-f]+$'
# Size of the VM's scratch file system for the tests' targets (KiB).
scratch_kib=$((1024 * 1024))
# The VM's memory (MiB): the scratch RAM disk lives in it.
vm_mib=4096
started=$SECONDS
command -v cargo >/dev/null || die "cargo is not on the PATH; install Rust (rustup) first"

echo "== building the tests (cargo test -p nacre-io -p nacre --no-run)"
build_log=$(mktemp)
vm_log=$(mktemp)
trap 'rm -f "$build_log" "$vm_log"' EXIT
cargo test -p nacre-io -p nacre --no-run --message-format=json-render-diagnostics \
    >"$build_log" || die "building the tests failed"
# The VM sees this machine's root read-only but has its own /tmp, so a checkout under /tmp
# (as CI's may be) is out of its sight: run copies staged under the cache directory.
stage="${XDG_CACHE_HOME:-$HOME/.cache}/nacre/kernel-test"
rm -rf "$stage"
mkdir -p "$stage"
bins=()
while read -r bin; do
    if [[ $(basename "$bin") =~ $host_only ]]; then
        continue
    fi
    staged="$stage/$(basename "$bin")"
    cp "$bin" "$staged"
    bins+=("$staged")
done < <(grep '"reason":"compiler-artifact"' "$build_log" | grep -o '"executable":"[^"]*"' |
    cut -d'"' -f4)
[ ${#bins[@]} -gt 0 ] || die "found no test binaries in cargo's output"
echo "   ${#bins[@]} test binaries staged in $stage"

echo "== running them on the VM's kernel (scripts/rdma-vm/run.sh, timeout ${timeout_s}s)"
# The VM's CPU is emulated: the exercisers and the geometry sweep run smaller there (fewer
# operations, fewer queue layouts, transfers up to 8 MiB; every piece count up to 128 per
# target is still met). They run whole on this machine's kernel in cargo test.
guest='export NACRE_FSX_OPS=200 NACRE_FSX_QUEUE_LAYOUTS=1 NACRE_SWEEP_MAX_BYTES=8388608;
       $NACRE_VM_MODPROBE brd rd_nr=1 rd_size=$SCRATCH_KIB && $NACRE_VM_MODPROBE ext4 &&
       mkfs.ext4 -q /dev/ram0 && mkdir -p /tmp/scratch && mount /dev/ram0 /tmp/scratch &&
       export TMPDIR=/tmp/scratch || { echo "no scratch file system in the VM"; exit 1; }
       echo "kernel $(uname -r)";
       for bin in $BINS; do echo "== $bin"; "$bin" "$@" || exit $?; done'
set +e
scripts/rdma-vm/run.sh --timeout "$timeout_s" --mem "$vm_mib" -- \
    bash -c "BINS='${bins[*]}'; SCRATCH_KIB=$scratch_kib; $guest" kernel-tests "$@" 2>&1 |
    tee "$vm_log" | grep -E '^(kernel |== |test result|SKIPPED|.*panicked|.*FAILED)'
status=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - started))
if [ "$status" -eq 124 ]; then
    tail -40 "$vm_log"
    die "the tests did not finish within ${timeout_s}s in the VM (after ${elapsed}s in all)"
fi
if [ "$status" -ne 0 ]; then
    tail -60 "$vm_log"
    die "the tests FAILED on the VM's kernel (exit status $status, ${elapsed}s in all)"
fi
results=$(grep -cE '^test result: ok' "$vm_log" || true)
[ "$results" -eq ${#bins[@]} ] || die "expected ${#bins[@]} test results from the VM, found $results"
kernel=$(grep -m1 '^kernel ' "$vm_log" | cut -d' ' -f2)
echo "== the storage and engine tests PASSED on kernel $kernel (${elapsed}s in all, VM boot included)"
