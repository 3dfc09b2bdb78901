#!/usr/bin/env bash
# Runs the RDMA transport's tests on a real RDMA device: builds them here (with the build
# dependencies installed when missing), then runs the test binary inside the Soft-RoCE VM of
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

echo "== building the RDMA tests (cargo test -p nacre-transport --features rdma --no-run)"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
cargo test -p nacre-transport --features rdma --no-run --message-format=json-render-diagnostics >"$build_log" \
    || die "building the RDMA tests failed"
# The compiler artifact of tests/rdma.rs names its executable.
test_bin=$(grep '"reason":"compiler-artifact"' "$build_log" | grep '/transport/tests/rdma.rs"' \
    | grep -o '"executable":"[^"]*"' | head -n 1 | cut -d'"' -f4)
[ -n "$test_bin" ] && [ -x "$test_bin" ] || die "cannot find the built RDMA test binary in cargo's output"
echo "   test binary: $test_bin"

# The VM sees this machine's root read-only but has its own /tmp, so a checkout under /tmp
# (as CI's may be) is out of its sight: run a copy staged under the cache directory.
stage="${XDG_CACHE_HOME:-$HOME/.cache}/nacre/rdma-test"
mkdir -p "$stage"
cp "$test_bin" "$stage/rdma-tests"
test_bin="$stage/rdma-tests"

echo "== running them in the Soft-RoCE VM (scripts/rdma-vm/run.sh, timeout ${timeout_s}s)"
vm_log=$(mktemp)
trap 'rm -f "$build_log" "$vm_log"' EXIT
# Inside the VM: show the device the tests use, then run them with their output shown.
guest='echo "rdma devices in the VM:"; ibv_devices; rdma link show; echo;
       echo "NACRE_RDMA_ADDR=$NACRE_RDMA_ADDR NACRE_RDMA_DEV=$NACRE_RDMA_DEV";
       exec "$0" --nocapture "$@"'
set +e
scripts/rdma-vm/run.sh --timeout "$timeout_s" -- bash -c "$guest" "$test_bin" "$@" 2>&1 | tee "$vm_log"
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
summary=$(grep -E '^test result: ' "$vm_log" | tail -n 1)
echo "== RDMA tests PASSED on a real Soft-RoCE device (rdma_rxe: rxe0 at 198.18.0.1 in a VM): ${summary#test result: }"
echo "   (${elapsed}s in all, build and VM boot included)"
