#!/usr/bin/env bash
# The C ABI's tests, as a C user meets it: installs libnacre with scripts/install.sh into a
# temporary prefix, compiles the C tests and examples against it with pkg-config (warnings
# are errors), starts a local cluster, and runs
#   - ffi/tests/c/api.c and queue.c under valgrind (an invalid access or a leak fails),
#   - examples/c/striped.c, linked against libnacre.so and against libnacre.a,
#   - examples/mpi/strided.c under mpirun -np 4 (OpenMPI),
#   - benches/mpi/nacre-ior.c (nacre bench's MPI mode) under mpirun -np 4, with files
#     written by MPI ranks verified by `nacre bench` threads and the other way round.
# Installs gcc, valgrind, pkg-config and OpenMPI from Debian when they are missing.
#
#   scripts/c-test.sh [--targets N]   (default 2)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
. "$NACRE_ROOT/scripts/lib/cluster.sh"
cd "$NACRE_ROOT"

targets=2
while [ $# -gt 0 ]; do
    case "$1" in
        --targets) [ $# -ge 2 ] || die "c-test.sh: --targets needs a number"; targets=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "c-test.sh: unknown argument $1 (see --help)" ;;
    esac
done
need_packages cc:gcc valgrind:valgrind pkg-config:pkg-config python3:python3 \
    mpicc:libopenmpi-dev mpirun:openmpi-bin

work=$(mktemp -d "${TMPDIR:-/tmp}/nacre-c-test.XXXXXX")
cleanup_work() { rm -rf "$work"; }
trap cleanup_work EXIT

echo "== building nacre (release) and installing libnacre into a temporary prefix"
cargo build --release --quiet -p nacre-cli
scripts/install.sh --prefix "$work/prefix"
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
libdir=$(pkg-config --variable=libdir nacre)
cflags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1"

echo "== compiling the C tests and examples with \$(pkg-config --cflags --libs nacre)"
for t in api queue; do
    cc $cflags "ffi/tests/c/$t.c" -o "$work/$t" $(pkg-config --cflags --libs nacre) \
        -Wl,-rpath,"$libdir" -lpthread
done
cc $cflags examples/c/striped.c -o "$work/striped" $(pkg-config --cflags --libs nacre) \
    -Wl,-rpath,"$libdir"
# Static: libnacre.a and the system libraries it needs (Libs.private).
cc $cflags examples/c/striped.c -o "$work/striped-static" $(pkg-config --cflags nacre) \
    "$libdir/libnacre.a" $(pkg-config --static --libs-only-l nacre | sed 's/-lnacre//')
if ldd "$work/striped-static" | grep -q libnacre; then
    die "striped-static is linked against libnacre.so, not libnacre.a"
fi
mpicc $cflags examples/mpi/strided.c -o "$work/strided" $(pkg-config --cflags --libs nacre) \
    -Wl,-rpath,"$libdir"
mpicc $cflags benches/mpi/nacre-ior.c -o "$work/nacre-ior" $(pkg-config --cflags --libs nacre) \
    -Wl,-rpath,"$libdir"

echo "== starting a metadata service and $targets targets"
cluster_start "$targets" tcp
# The C programs exit on their own, and cluster_stop runs on EXIT too.
trap 'cluster_stop; cleanup_work' EXIT
address=${NACRE_META#tcp://}

valgrind_run() {
    valgrind -q --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible "$@"
}

echo "== C tests under valgrind"
valgrind_run "$work/api" "$address"
valgrind_run "$work/queue" "$address"

echo "== examples/c/striped.c (shared, then static)"
"$work/striped" "$address" /c-example
"$work/striped-static" "$address" /c-example-static

echo "== examples/mpi/strided.c under mpirun -np 4"
# OpenMPI's shared-memory transport wants a writable, roomy /dev/shm; the vader BTL is
# enough on one host and avoids probing for network interfaces.
OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1 \
    timeout 600 mpirun -np 4 --oversubscribe --allow-run-as-root \
    "$work/strided" "$address" $((4 << 20)) 4 $((1 << 20))

# nacre bench's MPI mode (benches/mpi/nacre-ior.c): ranks as tasks, and files written by
# one driver verified byte for byte by the other.
mpi4() {
    OMPI_MCA_btl=self,vader timeout 600 mpirun -np 4 --oversubscribe --allow-run-as-root "$@"
}
echo "== benches/mpi/nacre-ior.c: nacre bench under mpirun -np 4, through the C ABI"
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -t 1m -b 4m -s 2 -C -e -i 2 --queue-depth 4
mpi4 "$work/nacre-ior" --meta "$NACRE_META" --preset ior-hard -s 16 --json |
    python3 -c 'import json, sys; r = json.loads(sys.stdin.read().splitlines()[-1]); assert r["driver"] == "mpi" and r["read_mib_s"] > 0, r'
echo "== MPI ranks write, threads read back (and the other way round), -F -z, every byte checked"
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -F -z -t 64k -b 1m -s 2 -w -k -o /cross-mpi
"$NACRE_BIN" bench --meta "$NACRE_META" -N 4 -F -z -t 64k -b 1m -s 2 -r -C -o /cross-mpi >/dev/null
"$NACRE_BIN" bench --meta "$NACRE_META" -N 4 -t 47008 -b 47008 -s 8 -w -k -o /cross-threads >/dev/null
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -t 47008 -b 47008 -s 8 -r -C -o /cross-threads >/dev/null

echo "== the C ABI: every check passed"
