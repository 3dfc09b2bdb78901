#!/usr/bin/env bash
# The C ABI's tests, as a C user meets it: installs libnacre with scripts/install.sh into a
# temporary prefix, compiles the C tests and examples against it with pkg-config (warnings
# are errors), starts a local cluster, and runs
#   - ffi/tests/c/api.c, queue.c, sweep.c (many pieces on one target, queues 128 to 4096
#     deep, a poll-only loop, processes reading one object at once, the header's promises)
#     and fsx.c (a seeded model-based exerciser) under valgrind (an invalid access or a leak
#     fails),
#   - examples/c/striped.c, linked against libnacre.so and against libnacre.a, and linked
#     from the build tree (-L target/release -lnacre, no install),
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
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
for t in api queue sweep fsx; do
    cc $cflags "ffi/tests/c/$t.c" -o "$work/$t" $(pkg-config --cflags --libs nacre) \
        -Wl,-rpath,"$libdir" -lpthread
done
cc $cflags examples/c/striped.c -o "$work/striped" $(pkg-config --cflags --libs nacre) \
    -Wl,-rpath,"$libdir"
# Static: libnacre.a and the system libraries it needs (Libs.private).
cc $cflags examples/c/striped.c -o "$work/striped-static" $(pkg-config --cflags nacre) \
    "$libdir/libnacre.a" $(pkg-config --static --libs-only-l nacre | sed 's/-lnacre//')
# ldd is judged by what it prints, not its status: under pipefail a status of its own
# (a clean run once saw it fail though every library was found) failed the check.
linked=$(ldd "$work/striped-static" 2>&1 || true)
if grep -q libnacre <<<"$linked"; then
    die "striped-static is linked against libnacre.so, not libnacre.a"
fi
# From the build tree, as a cargo user links: the build makes libnacre.so.0 there.
tree=$CARGO_TARGET_DIR/release
cc $cflags examples/c/striped.c -o "$work/striped-tree" -I ffi/include -L "$tree" -lnacre \
    -Wl,-rpath,"$tree"
linked=$(ldd "$work/striped-tree" 2>&1 || true)
grep -q "libnacre.so.0 => $tree/libnacre.so.0" <<<"$linked" ||
    die "striped-tree does not find libnacre.so.0 in $tree: $linked"
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
valgrind_run "$work/sweep" "$address"
valgrind_run "$work/fsx" "$address" "${NACRE_FSX_OPS:-300}"

echo "== examples/c/striped.c (shared, static, and from the build tree)"
"$work/striped" "$address" /c-example
"$work/striped-static" "$address" /c-example-static
"$work/striped-tree" "$address" /c-example-tree

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
echo "== four ranks read one single-object file of 64 KiB stripes at once, 4 MiB reads"
# Each read is 64 pieces on one target's store, 4 ranks x 4 in flight at once.
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -c 1 -S 64k -t 4m -b 16m -s 2 -C --queue-depth 4 -o /one-object
echo "== MPI ranks write, threads read back (and the other way round), -F -z, every byte checked"
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -F -z -t 64k -b 1m -s 2 -w -k -o /cross-mpi
"$NACRE_BIN" bench --meta "$NACRE_META" -N 4 -F -z -t 64k -b 1m -s 2 -r -C -o /cross-mpi >/dev/null
"$NACRE_BIN" bench --meta "$NACRE_META" -N 4 -t 47008 -b 47008 -s 8 -w -k -o /cross-threads >/dev/null
mpi4 "$work/nacre-ior" --meta "$NACRE_META" -t 47008 -b 47008 -s 8 -r -C -o /cross-threads >/dev/null

echo "== the C ABI: every check passed"
