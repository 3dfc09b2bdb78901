//! nacre: the engine users link. It puts the layout, io and transport crates together into
//! a parallel file system data path: the memory pool, the target server, the metadata
//! service and the striped client.

pub mod client;
pub mod codec;
pub mod error;
pub mod limits;
pub mod mem;
pub mod meta;
pub mod queue;
mod server;
mod slots;
pub mod target_server;
pub mod units;

pub use client::{Client, ClientOptions, File, OpenOptions, Stat};
pub use error::Error;
pub use meta::server::MetaServer;
pub use queue::{Completion, Queue, QueueOp, Refused};
pub use target_server::{ConnectionCounts, ServedTarget, TargetConfig, TargetServer, TargetSpec};

pub use nacre_io as io;
pub use nacre_layout as layout;
pub use nacre_transport as transport;
