#!/usr/bin/env bash
# Builds libnacre (release) and installs the C library, its header and its pkg-config file:
#
#   PREFIX/lib/libnacre.so.0.1.0, libnacre.so.0 and libnacre.so (links), libnacre.a
#   PREFIX/include/nacre.h
#   PREFIX/lib/pkgconfig/nacre.pc
#
# so that `cc app.c $(pkg-config --cflags --libs nacre)` works with
# PKG_CONFIG_PATH=PREFIX/lib/pkgconfig (add --static to link libnacre.a instead). Programs
# linked against the shared library find it at run time through ldconfig (a system prefix),
# LD_LIBRARY_PATH, or an rpath (-Wl,-rpath,PREFIX/lib).
#
#   scripts/install.sh --prefix DIR [--debug]   (--debug: the unoptimized build, for tests)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$NACRE_ROOT"

prefix="" profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "install.sh: --prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --debug) profile=debug; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "install.sh: unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$prefix" ] || die "install.sh: --prefix DIR is required (see --help)"
command -v cargo >/dev/null || die "cargo is not on the PATH; install Rust (rustup) first"

if [ $profile = release ]; then
    cargo build --release -p nacre-ffi --quiet
else
    cargo build -p nacre-ffi --quiet
fi
built=$CARGO_TARGET_DIR/$profile
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
major=${version%%.*}
# What the static library needs from the system, as rustc reports it for this target.
static_libs=$(cargo rustc --quiet -p nacre-ffi --lib --crate-type staticlib \
    $([ $profile = release ] && echo --release) -- --print native-static-libs 2>&1 |
    sed -n 's/.*native-static-libs: //p' | tail -n1)
[ -n "$static_libs" ] || static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$built/libnacre.so" "$prefix/lib/libnacre.so.$version"
ln -sf "libnacre.so.$version" "$prefix/lib/libnacre.so.$major"
ln -sf "libnacre.so.$major" "$prefix/lib/libnacre.so"
install -m 0644 "$built/libnacre.a" "$prefix/lib/libnacre.a"
install -m 0644 ffi/include/nacre.h "$prefix/include/nacre.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@STATIC_LIBS@|$static_libs|" \
    ffi/nacre.pc.in > "$prefix/lib/pkgconfig/nacre.pc"
echo "installed libnacre $version ($profile) in $prefix"
