//! Criterion benchmarks of layout mapping (written by the layout work).
fn main() {}
