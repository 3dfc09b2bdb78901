//! nacre-transport moves messages and bulk bytes between processes: the versioned,
//! checksummed wire format, TCP driven by io_uring, and RDMA (verbs, rdmacm, one-sided
//! READ/WRITE) with automatic fallback to TCP, behind one interface.
//!
//! It knows nothing of layouts or storage.

pub mod limits;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod wire;
