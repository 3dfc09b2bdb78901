//! `nacre` is the engine users link: the pinned memory pool, the striped `Client`, the
//! `TargetServer` that serves objects from NVMe, and the `MetaServer` that keeps the
//! namespace and layouts. It is where layout, io and transport meet.
//!
//! This crate is filled by the engine issue; for now it re-exports the leaf crates.

pub use nacre_io as io;
pub use nacre_layout as layout;
pub use nacre_transport as transport;
