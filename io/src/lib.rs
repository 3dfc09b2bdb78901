//! nacre-io: objects on a target's local storage, moved with io_uring.
//!
//! It owns the on-disk shape of a target (a format stamp and one sparse file per object,
//! [`Target`]) and the engine that moves object bytes between memory and those files
//! ([`ObjectStore`]): O_DIRECT through io_uring with registered buffers and a registered
//! file table, batched submission, a bounded queue, and read-modify-write of unaligned
//! edges. It never touches the network, layouts or other crates of Nacre; types it shares
//! with them are plain (object ids as integers, memory as pointers and lengths).

mod buf;
mod error;
pub mod limits;
mod ring;
mod store;
mod target;

pub use buf::{AlignedBuf, Backing};
pub use error::{IoError, Operation};
pub use store::{Accounts, BatchOp, Completion, ObjectStore, Op, RESERVED_TAG_BIT, StoreConfig};
pub use target::{
    Capacity, FILESYSTEM_FILE, LOCK_FILE, OBJECTS_DIR, ObjectStat, STAMP_FILE, Target, TargetStamp,
    parse_uuid, random_uuid, uuid_text,
};
