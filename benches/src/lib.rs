//! Shared helpers of Nacre's benchmark programs. The criterion micro-benchmarks live in
//! `benches/benches/`, the end-to-end programs in `benches/src/bin/`.
#![forbid(unsafe_code)]

/// Parses a size such as `4k`, `1M` or `2G` (powers of 1024); the engine's own parser.
pub use nacre::units::parse_size;
