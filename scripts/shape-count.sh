#!/usr/bin/env bash
# Counts what the one-data-path issue (22) measures the code's shape by, so that anyone can
# rerun it before and after a change (docs/decisions/0019-a-sans-io-framer.md):
#   - the types that stand for a connection (structs and enums of transport and core whose
#     names say connection, link, peer, socket, stream or wire),
#   - the `unsafe` sites (blocks, fns, impls) outside the layers STYLE allows unsafe in
#     (io's ring, transport's rdma, core's mem, ffi), and in all,
#   - `pub unsafe fn` and `pub(crate) unsafe fn`, and the files they are in.
#
#   scripts/shape-count.sh [DIR]   (DIR: a checkout; the one this script is in by default)
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
# transport/src/rdma/off.rs is the build without RDMA's copy of the RDMA types' signatures
# (types with no values); a build has one or the other, so it is not counted twice.
sources() {
    find layout io transport core repo ffi cli benches -path '*/src/*' -name '*.rs' 2>/dev/null \
        | grep -v '^transport/src/rdma/off\.rs$' | sort
}

conn_types=$(sources | grep -E '^(transport|core)/' | xargs grep -hE \
    '^\s*(pub(\([a-z]+\))? )?(struct|enum) [A-Za-z]*(Conn|Connection|Link|Peer|Socket|Stream|Wire)[A-Za-z]*\b' \
    | sed -E 's/.*(struct|enum) ([A-Za-z]+).*/\2/' | grep -vE '(Options|Counts|Error)$' | sort -u)
echo "connection types: $(echo "$conn_types" | grep -c .) ($(echo $conn_types))"

# Code lines that hold `unsafe` (comment lines and `// SAFETY` notes left out).
unsafe_lines() { xargs grep -nE '\bunsafe\b' | grep -vE '^[^:]+:[0-9]+:\s*//' || true; }
allowed='^(io/src/ring|transport/src/rdma/|transport/src/rdma\.rs|core/src/mem|ffi/src/)'
all=$(sources | unsafe_lines | wc -l)
outside=$(sources | grep -vE "$allowed" | unsafe_lines | wc -l)
echo "unsafe sites: $all, outside io::ring, transport::rdma, core::mem and ffi: $outside"

pub_unsafe=$(sources | xargs grep -nE '^\s*pub(\(crate\))? unsafe fn' || true)
files=$(echo "$pub_unsafe" | grep . | cut -d: -f1 | sort -u | wc -l)
echo "pub unsafe fn: $(echo "$pub_unsafe" | grep -c .) in $files files"
