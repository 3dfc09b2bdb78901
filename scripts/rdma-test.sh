#!/usr/bin/env bash
# Runs the RDMA tests on a real RDMA device: the transport's (transport/tests/rdma.rs) and the
# engine's end to end (core/tests/rdma.rs: metadata service, targets and client on rdma:// and
# auto://). Builds them here (with the build dependencies installed when missing), then runs
# the test binaries inside the Soft-RoCE VM of
# scripts/rdma-vm/run.sh, where rxe0 at 198.18.0.1 exists. Fails when any test fails, and also
# when a test skipped for want of a device (which would mean the VM set-up is broken).
#
#   scripts/rdma-test.sh [TEST-NAME-FILTER...]     (extra arguments go to the test binary)
#
# Environment: NACRE_RDMA_TEST_TIMEOUT_S bounds the VM run (default 600 seconds).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$NACRE_ROOT"

case "${1:-}" in
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
timeout_s=${NACRE_RDMA_TEST_TIMEOUT_S:-600}
# Size of the VM's scratch file system for the engine's targets (KiB).
scratch_kib=$((256 * 1024))
started=$SECONDS

command -v cargo >/dev/null || die "cargo is not on the PATH; install Rust (rustup) first"
# rdma-sys runs bindgen (libclang) over the rdma-core headers, found through pkg-config.
need_packages pkg-config:pkg-config
missing=()
for pkg in libibverbs-dev librdmacm-dev libclang-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    echo "nacre: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building the RDMA tests (cargo test -p nacre-transport -p nacre --features rdma --no-run)"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo test -p nacre-transport -p nacre --features nacre-transport/rdma,nacre/rdma --no-run \
    --message-format=json-render-diagnostics >"$build_log" || die "building the RDMA tests failed"
# The VM sees this machine's root read-only but has its own /tmp, so a checkout under /tmp
# (as CI's may be) is out of its sight: run copies staged under the cache directory.
stage="${XDG_CACHE_HOME:-$HOME/.cache}/nacre/rdma-test"
mkdir -p "$stage"
bins=()
for source in transport/tests/rdma.rs core/tests/rdma.rs; do
    # The compiler artifact of the test file names its executable.
    bin=$(grep '"reason":"compiler-artifact"' "$build_log" | grep "/$source\"" \
        | grep -o '"executable":"[^"]*"' | head -n 1 | cut -d'"' -f4)
    [ -n "$bin" ] && [ -x "$bin" ] || die "cannot find the built test binary of $source in cargo's output"
    staged="$stage/$(echo "$source" | tr / -)"
    cp "$bin" "$staged"
    bins+=("$staged")
    echo "   $source: $staged"
done

echo "== running them in the Soft-RoCE VM (scripts/rdma-vm/run.sh, timeout ${timeout_s}s)"
vm_log=$(mktemp)
trap 'rm -f "$build_log" "$vm_log"' EXIT
# Inside the VM: an ext4 scratch file system on a RAM disk for the targets (the guest kernel's
# tmpfs refuses O_DIRECT), show the device the tests use, then run each binary with its
# output shown; the first failure is the exit status.
guest='$NACRE_VM_MODPROBE brd rd_nr=1 rd_size=$SCRATCH_KIB && $NACRE_VM_MODPROBE ext4 &&
       mkfs.ext4 -q /dev/ram0 && mkdir -p /tmp/scratch && mount /dev/ram0 /tmp/scratch &&
       export TMPDIR=/tmp/scratch || { echo "no scratch file system in the VM"; exit 1; }
       echo "rdma devices in the VM:"; ibv_devices; rdma link show; echo;
       echo "NACRE_RDMA_ADDR=$NACRE_RDMA_ADDR NACRE_RDMA_DEV=$NACRE_RDMA_DEV";
       for bin in $BINS; do echo "== $bin"; "$bin" --nocapture "$@" || exit $?; done'
set +e
scripts/rdma-vm/run.sh --timeout "$timeout_s" -- \
    bash -c "BINS='${bins[*]}'; SCRATCH_KIB=$scratch_kib; $guest" rdma-tests "$@" 2>&1 | tee "$vm_log"
status=${PIPESTATUS[0]}
set -e

elapsed=$((SECONDS - started))
echo
if [ "$status" -eq 124 ]; then
    die "the RDMA tests did not finish within ${timeout_s}s in the VM (after ${elapsed}s in all)"
fi
if [ "$status" -ne 0 ]; then
    die "the RDMA tests FAILED on the Soft-RoCE device (exit status $status, ${elapsed}s in all)"
fi
if grep -q '^SKIPPED ' "$vm_log"; then
    die "some RDMA tests were SKIPPED inside the VM, so its RDMA device is not working"
fi
if ! grep -q 'rxe0' "$vm_log"; then
    die "the VM did not list the Soft-RoCE device rxe0"
fi
results=$(grep -cE '^test result: ok' "$vm_log" || true)
[ "$results" -eq ${#bins[@]} ] || die "expected ${#bins[@]} test results from the VM, found $results"
summary=$(grep -E '^test result: ' "$vm_log" | sed 's/^test result: //' | paste -sd ';' -)
echo "== RDMA tests PASSED on a real Soft-RoCE device (rdma_rxe: rxe0 at 198.18.0.1 in a VM): $summary"
echo "   (${elapsed}s in all, build and VM boot included)"
