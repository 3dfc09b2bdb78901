//! Shared helpers of Nacre's benchmark programs. The criterion micro-benchmarks live in
//! `benches/benches/`, the end-to-end programs in `benches/src/bin/`.
#![forbid(unsafe_code)]
