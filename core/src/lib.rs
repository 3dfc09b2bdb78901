//! `nacre` is the engine users link: the pinned memory pool, the striped `Client`, the
//! `TargetServer` that serves objects from NVMe, and the `MetaServer` that keeps the
//! namespace and layouts. It is where layout, io and transport meet.
//!
//! Built so far: [`mem`], the memory pool. The servers and the client come with the rest
//! of the engine issue; the leaf crates are re-exported meanwhile.

pub mod limits;
pub mod mem;

pub use nacre_io as io;
pub use nacre_layout as layout;
pub use nacre_transport as transport;
